"""Checks shared by both services against open deployments and hostile input.

- :func:`is_loopback`: a service bound beyond loopback must have credentials configured.
- :func:`secret_problem`: what is wrong with a secret (empty, a placeholder, too short), or ``None``.
- :func:`loads_json`: ``json.loads`` that turns nesting past the recursion limit into a
  ``ValueError`` (a 400), not a ``RecursionError`` (a 500).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

MIN_SECRET_LENGTH = 16
# lower-cased fragments of the values example files and tutorials ship with
PLACEHOLDERS = ("change-me", "changeme", "change_me", "replace-me", "replaceme", "placeholder", "example",
                "your-", "your_", "xxxx", "secret", "password", "todo")


def is_loopback(host: str) -> bool:
    """``127.0.0.0/8``, ``::1`` and ``localhost``; anything else (``0.0.0.0``, a name) is reachable."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secret_problem(value: str | None, *, min_length: int = MIN_SECRET_LENGTH) -> str | None:
    """Why ``value`` is not an acceptable secret, or ``None`` when it is."""
    if value is None or not value.strip():
        return "is empty"
    lowered = value.lower()
    for fragment in PLACEHOLDERS:
        if fragment in lowered:
            return f"looks like a placeholder (contains {fragment!r})"
    if len(set(value)) == 1:
        return "is one character repeated"
    if len(value) < min_length:
        return f"is {len(value)} characters; at least {min_length} are needed"
    return None


def loads_json(body: bytes | str) -> Any:
    """Parse JSON; raises ``ValueError`` for malformed JSON and for JSON nested too deeply."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
