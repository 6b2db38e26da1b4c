"""Annotation tools behind one protocol: Label Studio, Argilla, and an in-memory ``offline`` tool.

``base`` holds the protocol (:class:`AnnotationTool`) and the records crossing it; each tool is
its own module, imported where it is used (the SDKs load only when a tool is built).
"""

from connector.tools.base import AnnotationTool, Pull, PushItem, RemoteAnswer, RemoteItem

__all__ = ["AnnotationTool", "Pull", "PushItem", "RemoteAnswer", "RemoteItem"]
