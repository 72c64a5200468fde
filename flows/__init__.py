"""Wiring: the Prefect flows, the DVC stage entry points and the command line."""
