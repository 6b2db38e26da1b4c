"""Test access to the Label Studio launcher (``sync.label_studio_server``)."""

from sync.label_studio_server import LabelStudioServer, free_port, start_from_template

__all__ = ["LabelStudioServer", "free_port", "start_from_template"]
