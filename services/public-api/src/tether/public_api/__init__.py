"""Tether public_api."""
