"""Test access to the Label Studio launcher (``hitl.local.label_studio_server``), as the test user."""

from pathlib import Path

from hitl.local.label_studio_server import LabelStudioServer
from hitl.local.label_studio_server import start_from_template as _start_from_template
from hitl.local.processes import free_port
from tests.support.credentials import LS_PASSWORD, LS_TOKEN, LS_USERNAME

__all__ = ["LabelStudioServer", "free_port", "start_from_template"]


def start_from_template(workdir: Path) -> LabelStudioServer:
    """A Label Studio on a copy of the test user's template, in ``workdir``."""
    return _start_from_template(workdir, username=LS_USERNAME, password=LS_PASSWORD, token=LS_TOKEN)
