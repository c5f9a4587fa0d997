"""Drivers: run a job end to end (plan, store, backend, progress) and the Python API."""
