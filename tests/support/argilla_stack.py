"""Test access to the local argilla-server stack (``sync.argilla_local``)."""

from sync.argilla_local import API_KEY, PASSWORD, ArgillaStack, ArgillaUnavailable, start

__all__ = ["API_KEY", "PASSWORD", "ArgillaStack", "ArgillaUnavailable", "start"]
