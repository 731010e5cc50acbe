"""Tether telemetry."""
