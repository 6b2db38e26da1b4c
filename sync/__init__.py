"""Sync service and scheduler (push to / pull from Label Studio and Argilla)."""
