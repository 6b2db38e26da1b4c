"""``/v1/decisions`` and ``/v1/feedback``: the decision API of the sync service (FastAPI, OpenAPI).

A caller authenticates with ``Authorization: Bearer <HITL_DECISIONS_TOKEN>`` when one is set
(required beyond loopback, like the webhook secret). ``POST`` answers 201 with a new decision,
200 with the first decision of an idempotency key sent again, 409 when that key came with
another request, 422 when the task cannot decide the request (its kind, labels, schema).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from connector.decisions import DecisionRequest, DecisionView, FeedbackRequest
from connector.store.models import OnlineDecision
from sync.decisions import DecisionError, DecisionService, KeyReused


def decisions_router(service: DecisionService, *, token: str | None) -> APIRouter:
    """The routes, over ``service``; ``token``: the bearer token callers must send (None: open)."""

    def authorized(request: Request) -> None:
        if token is None:
            return
        sent = request.headers.get("authorization", "")
        if not secrets.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    router = APIRouter(prefix="/v1", tags=["decisions"], dependencies=[Depends(authorized)])
    errors = {401: {"description": "missing or wrong bearer token"},
              409: {"description": "the idempotency key was used for another request"},
              422: {"description": "the task cannot decide this request"}}

    def answer(take: Callable[[], tuple[OnlineDecision, bool]], response: Response) -> DecisionView:
        try:
            decision, created = take()
        except KeyReused as exc:
            raise HTTPException(409, str(exc)) from None
        except DecisionError as exc:
            raise HTTPException(422, str(exc)) from None
        if not created:
            response.status_code = 200
        return service.view(decision)

    @router.post("/decisions", response_model=DecisionView, status_code=201, responses=errors)
    def post_decision(body: DecisionRequest, response: Response) -> DecisionView:
        """Decide now (``auto_approved`` / ``auto_rejected``) or hold for review (``pending_review``)."""
        return answer(lambda: service.decide(body), response)

    @router.get("/decisions/{decision_id}", response_model=DecisionView, responses={404: {"description": "none"}})
    def get_decision(decision_id: int) -> DecisionView:
        """The decision as it stands: pending (with its queue position), or its outcome."""
        decision = service.store.online.get(decision_id)
        if decision is None:
            raise HTTPException(404, f"no decision {decision_id}")
        return service.view(decision)

    @router.post("/feedback", response_model=DecisionView, status_code=201, responses=errors)
    def post_feedback(body: FeedbackRequest, response: Response) -> DecisionView:
        """A user's thumbs up or down on a generated answer: thumbs-down answers go to review."""
        return answer(lambda: service.feedback(body), response)

    return router
