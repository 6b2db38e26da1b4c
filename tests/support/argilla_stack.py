"""Test access to the local argilla-server stack (``hitl.local.argilla_stack``), as the test user."""

from pathlib import Path

from hitl.local.argilla_stack import ArgillaStack, ArgillaUnavailable
from hitl.local.argilla_stack import start as _start
from tests.support.credentials import ARGILLA_API_KEY as API_KEY
from tests.support.credentials import ARGILLA_PASSWORD as PASSWORD

__all__ = ["API_KEY", "PASSWORD", "ArgillaStack", "ArgillaUnavailable", "start"]


def start(workdir: Path, **kwargs) -> ArgillaStack:
    """A local argilla-server stack in ``workdir`` whose owner is the test user."""
    kwargs.setdefault("api_key", API_KEY)
    kwargs.setdefault("password", PASSWORD)
    return _start(workdir, **kwargs)
