"""Smoke tests proving the local control plane behaves like a real cluster."""
