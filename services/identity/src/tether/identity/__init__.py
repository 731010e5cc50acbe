"""Tether identity."""
