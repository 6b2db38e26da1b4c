"""Pushes: which item went to which tool and project, written before the remote call and confirmed after."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from connector.store.models import Item, Push, utcnow
from connector.store.repository import BEFORE_PUSHED, Repository, check_items_exist, check_tool, chunks


class PushRepository(Repository):
    """``store.pushes``: ``begin`` (pending) before the remote call, ``confirm`` with the remote ids
    after it; what a crash between the two leaves is ``pending``, reconciled or ``cancel``-ed."""

    def begin(self, item_ids: Iterable[int], tool: str, project: str) -> list[Push]:
        """Write ``pending`` pushes before the remote call; returns the new rows.

        Items that already have a push to this tool and project, pending or confirmed, are
        skipped: a pending one is reconciled through ``pending``, never pushed again here.
        """
        check_tool(tool)
        wanted = list(dict.fromkeys(int(i) for i in item_ids))
        with self._sessions.begin() as s:
            check_items_exist(s, wanted)
            done: set[int] = set()
            for chunk in chunks(wanted):
                done.update(s.scalars(select(Push.item_id).where(Push.tool == tool, Push.project == project,
                                                                 Push.item_id.in_(chunk))))
            new = [i for i in wanted if i not in done]
            if not new:
                return []
            now = utcnow()
            s.execute(insert(Push), [{"item_id": i, "tool": tool, "project": project, "remote_id": None,
                                      "status": "pending", "created_at": now, "confirmed_at": None} for i in new])
            return list(_pushes(s, tool, project, new).values())

    def confirm(self, remote_ids: Mapping[int, str | int], tool: str, project: str) -> int:
        """Mark pushes confirmed with their remote ids (item id -> remote id); items move to ``pushed``.

        Returns how many were confirmed by this call; confirming again with the same remote id is
        a no-op. A push never begun, or confirmed with another remote id, raises ``ValueError``.
        """
        check_tool(tool)
        with self._sessions.begin() as s:
            pushes = _pushes(s, tool, project, remote_ids)
            missing = [i for i in remote_ids if int(i) not in pushes]
            if missing:
                raise ValueError(f"no push to {tool}/{project} was begun for items {missing[:10]}")
            now = utcnow()
            rows = []
            for item_id, remote_id in remote_ids.items():
                push = pushes[int(item_id)]
                if push.status == "confirmed":
                    if push.remote_id != str(remote_id):
                        raise ValueError(f"item {item_id} is already confirmed in {tool}/{project} as "
                                         f"{push.remote_id!r}, not {str(remote_id)!r}")
                    continue
                rows.append({"id": push.id, "status": "confirmed", "remote_id": str(remote_id), "confirmed_at": now})
            if rows:  # bulk statements: per-object ORM updates cost seconds per 10,000 pushes
                s.execute(update(Push).execution_options(synchronize_session=False), rows)
                ids = [pushes[int(i)].item_id for i in remote_ids if pushes[int(i)].status != "confirmed"]
                for chunk in chunks(ids):
                    s.execute(update(Item).where(Item.id.in_(chunk), Item.state.in_(BEFORE_PUSHED))
                              .values(state="pushed", updated_at=now).execution_options(synchronize_session=False))
            return len(rows)

    def cancel(self, item_ids: Iterable[int], tool: str, project: str) -> int:
        """Drop pending pushes (reconciliation found no remote copy), so the next pass begins them
        again; confirmed pushes are left alone. Returns how many were dropped."""
        check_tool(tool)
        with self._sessions.begin() as s:
            pending = [p for p in _pushes(s, tool, project, item_ids).values() if p.status == "pending"]
            for push in pending:
                s.delete(push)
            return len(pending)

    def forget(self, item_ids: Iterable[int], tool: str, project: str) -> int:
        """Drop the pushes of items whose remote item is gone (deleted in the tool); those still
        ``pushed`` go back to ``predicted``, to be routed and pushed again. Returns how many were dropped."""
        check_tool(tool)
        with self._sessions.begin() as s:
            pushes = list(_pushes(s, tool, project, item_ids).values())
            for push in pushes:
                s.delete(push)
            for chunk in chunks([p.item_id for p in pushes]):
                s.execute(update(Item).where(Item.id.in_(chunk), Item.state == "pushed").values(state="predicted")
                          .execution_options(synchronize_session=False))
            return len(pushes)

    def pending(self, tool: str, project: str) -> list[Push]:
        """Pushes begun but never confirmed (what a crash between the two left behind), oldest first."""
        check_tool(tool)
        stmt = select(Push).where(Push.tool == tool, Push.project == project, Push.status == "pending")
        with self._sessions() as s:
            return list(s.scalars(stmt.order_by(Push.id)))

    def remote_ids(self, item_ids: Iterable[int], tool: str, project: str) -> dict[int, str]:
        """Item id -> remote id (task or record id) of its confirmed push to ``project``."""
        check_tool(tool)
        with self._sessions() as s:
            pushes = _pushes(s, tool, project, item_ids)
        return {i: p.remote_id for i, p in pushes.items() if p.status == "confirmed" and p.remote_id is not None}

    def find(self, tool: str, project: str, remote_id: str | int) -> Push | None:
        """The confirmed push whose remote id (a task or record id) is ``remote_id``."""
        stmt = select(Push).where(Push.tool == tool, Push.project == project, Push.remote_id == str(remote_id))
        with self._sessions() as s:
            return s.scalars(stmt).first()


def _pushes(s: Session, tool: str, project: str, item_ids: Iterable[int]) -> dict[int, Push]:
    wanted = sorted({int(i) for i in item_ids})
    found: dict[int, Push] = {}
    for chunk in chunks(wanted):
        found.update((p.item_id, p) for p in s.scalars(
            select(Push).where(Push.tool == tool, Push.project == project, Push.item_id.in_(chunk))))
    return found
