"""Tether proxy."""
