"""Optional HTTP basic auth (what Label Studio sends) and bearer tokens."""

from __future__ import annotations

import secrets

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer

from ml_backend.settings import BackendSettings


class _Basic(HTTPBasic):
    """FastAPI's ``HTTPBasic`` answers 401 to a malformed ``Basic`` header even with ``auto_error=False``
    (so an open backend refused it); here it is no credential, and :func:`require_auth` decides."""

    async def __call__(self, request: Request) -> HTTPBasicCredentials | None:  # type: ignore[override]
        try:
            return await super().__call__(request)
        except HTTPException:
            return None


_basic = _Basic(auto_error=False)
_bearer = HTTPBearer(auto_error=False)


def _eq(a: str, b: str) -> bool:
    return secrets.compare_digest(a.encode(), b.encode())


def require_auth(request: Request, basic: HTTPBasicCredentials | None = Depends(_basic),
                 bearer: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    """Pass when no credentials are configured (loopback only: the settings refuse it beyond), or
    when one configured scheme matches."""
    s: BackendSettings = request.app.state.settings
    want_basic = s.basic_auth_user is not None and s.basic_auth_password is not None
    want_token = s.api_token is not None
    if not (want_basic or want_token):
        return
    if (want_basic and basic is not None and _eq(basic.username, s.basic_auth_user)
            and _eq(basic.password, s.basic_auth_password.get_secret_value())):
        return
    if (want_token and bearer is not None and bearer.scheme.lower() == "bearer"
            and _eq(bearer.credentials, s.api_token.get_secret_value())):
        return
    challenge = 'Basic realm="hitl-ml-backend"' if want_basic else "Bearer"
    raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong credentials",
                        headers={"WWW-Authenticate": challenge})
