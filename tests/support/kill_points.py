"""Deterministic kill points for subprocess tests: SIGKILL the process right after a named method returns.

A test runs a command (``python -m hitl.cli sync push``, say) with ``PYTHONPATH`` starting with
``tests/support/kill_site`` (:func:`env`): that folder's ``sitecustomize`` imports this module at
interpreter start-up, and :func:`install` reads

- ``HITL_KILL_AT``: ``package.module:Class.method``; the method is wrapped so that its ``N``-th
  return (``HITL_KILL_AFTER``, default 1) writes ``HITL_KILL_MARK`` (a file saying the point was
  reached) and SIGKILLs the whole process, on whatever thread it ran: nothing after it runs, no
  ``finally``, no commit, exactly as a crash there;
- ``HITL_KILL_LS_PAGE_SIZE``: the page size every ``LabelStudioTool`` reads with (a multi-page
  pull on a small project); ``HITL_KILL_ARGILLA_PAGE_SIZE``: the same for ``ArgillaTool``'s searches.

Nothing of this is in production code; without ``HITL_KILL_AT`` the module changes nothing.
``python -c "from tests.support.kill_points import consolidate; consolidate()"`` runs
``sync.jobs.consolidate_job`` once, as the scheduler's sync job does (settings from ``HITL_*``).
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import threading
from pathlib import Path

SITE = Path(__file__).with_name("kill_site")
ROOT = Path(__file__).resolve().parents[2]


def env(base: dict[str, str], at: str | None = None, *, after: int = 1, mark: Path | None = None,
        **extra: str) -> dict[str, str]:
    """``base`` plus what makes a subprocess die right after the ``after``-th return of ``at``."""
    out = {**base, "PYTHONPATH": os.pathsep.join([str(SITE), str(ROOT)]), **extra}
    for key in ("HITL_KILL_AT", "HITL_KILL_AFTER", "HITL_KILL_MARK"):
        out.pop(key, None)
    if at is not None:
        out.update(HITL_KILL_AT=at, HITL_KILL_AFTER=str(after))
        if mark is not None:
            out["HITL_KILL_MARK"] = str(mark)
    return out


def install() -> None:
    page_size = os.environ.get("HITL_KILL_LS_PAGE_SIZE")
    if page_size:
        from connector.tools import label_studio

        init = label_studio.LabelStudioTool.__init__

        @functools.wraps(init)
        def small_pages(self, *args, **kwargs):
            init(self, *args, **kwargs)
            self.page_size = int(page_size)

        label_studio.LabelStudioTool.__init__ = small_pages
    argilla_page_size = os.environ.get("HITL_KILL_ARGILLA_PAGE_SIZE")
    if argilla_page_size:
        from connector.tools import argilla

        argilla.SEARCH_PAGE = int(argilla_page_size)
    target = os.environ.get("HITL_KILL_AT")
    if not target:
        return
    module_name, _, qualname = target.partition(":")
    owner_name, _, method_name = qualname.rpartition(".")
    owner = importlib.import_module(module_name)
    for part in owner_name.split(".") if owner_name else []:
        owner = getattr(owner, part)
    original = getattr(owner, method_name)
    after = int(os.environ.get("HITL_KILL_AFTER", "1"))
    mark = os.environ.get("HITL_KILL_MARK")
    calls = 0
    lock = threading.Lock()

    @functools.wraps(original)
    def killing(*args, **kwargs):
        nonlocal calls
        result = original(*args, **kwargs)
        with lock:
            calls += 1
            if calls == after:
                if mark:
                    Path(mark).write_text(f"{target} returned {calls} time(s)\n")
                os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, method_name, killing)


def consolidate() -> None:
    """One ``consolidate_job`` run on the ``HITL_*`` settings (its send-backs go to the task's tool)."""
    from sync.jobs import consolidate_job
    from sync.runner import build_context, open_store
    from sync.settings import SyncSettings

    settings = SyncSettings()
    with open_store(settings) as store:
        print(consolidate_job(build_context(settings, store)))
