"""Shared core: schemas, routing, uncertainty, calibration, agreement, state store, tool clients."""
