"""Tether cli."""
