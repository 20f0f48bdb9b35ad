"""Measurements of loss geometry: one module per measurement."""
