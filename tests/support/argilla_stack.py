"""Test access to the local argilla-server stack (``sync.argilla_server``)."""

from sync.argilla_server import API_KEY, PASSWORD, ArgillaStack, ArgillaUnavailable, start

__all__ = ["API_KEY", "PASSWORD", "ArgillaStack", "ArgillaUnavailable", "start"]
