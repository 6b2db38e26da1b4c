"""The production stack's start-up check of its secrets: ``python -m hitl.preflight``.

docker-compose.yml runs it as the one-shot service ``preflight`` with the stack's ``.env``, and
every other service waits for it to succeed (PostgreSQL directly, the rest through it, the ML
backend directly), so nothing starts on a placeholder, empty or short secret. It prints one line
per problem, naming the variable, and exits 1; or prints ``environment OK`` and exits 0.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from connector.hardening import MIN_SECRET_LENGTH, secret_problem

# every one must be set (docker-compose.yml refuses to start without them as well)
REQUIRED_SECRETS = ("POSTGRES_PASSWORD", "LABEL_STUDIO_PASSWORD", "HITL_LS_API_KEY", "ARGILLA_PASSWORD",
                    "HITL_ARGILLA_API_KEY", "HITL_WEBHOOK_SECRET", "HITL_API_TOKEN")
# checked when set
OPTIONAL_SECRETS = ("HITL_ARGILLA_WEBHOOK_SECRET", "HITL_BASIC_AUTH_PASSWORD")
LS_TOKEN_MAX = 40  # Label Studio stores the admin's token in a 40-character column


def check_env(env: Mapping[str, str]) -> list[str]:
    """Problems with the stack's secrets in ``env``, one line each, naming the variable."""
    problems = []
    for name in REQUIRED_SECRETS + OPTIONAL_SECRETS:
        value = env.get(name, "")
        if name in OPTIONAL_SECRETS and not value.strip():
            continue
        if (reason := secret_problem(value)) is not None:
            problems.append(f"{name} {reason}")
    if len(env.get("HITL_LS_API_KEY", "")) > LS_TOKEN_MAX:
        problems.append(f"HITL_LS_API_KEY is {len(env['HITL_LS_API_KEY'])} characters; Label Studio keeps at most "
                        f"{LS_TOKEN_MAX}")
    user, password = env.get("HITL_BASIC_AUTH_USER", "").strip(), env.get("HITL_BASIC_AUTH_PASSWORD", "").strip()
    if bool(user) != bool(password):
        missing = "HITL_BASIC_AUTH_PASSWORD" if user else "HITL_BASIC_AUTH_USER"
        problems.append(f"{missing} is not set: basic auth needs both HITL_BASIC_AUTH_USER and "
                        "HITL_BASIC_AUTH_PASSWORD (or neither)")
    return problems


def main(env: Mapping[str, str] | None = None) -> int:
    problems = check_env(os.environ if env is None else env)
    for line in problems:
        print(f"preflight: {line}", file=sys.stderr)
    if problems:
        print(f"preflight: refusing to start; set these in .env (random, at least {MIN_SECRET_LENGTH} characters: "
              "`openssl rand -hex 20`)", file=sys.stderr)
        return 1
    print("preflight: environment OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
