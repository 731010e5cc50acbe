"""Tether destination."""
