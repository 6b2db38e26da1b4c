"""The test sessions' users for Label Studio and argilla-server: tests only, never shipped."""

LS_USERNAME = "admin@example.com"
LS_PASSWORD = "hitl-test-password"
LS_TOKEN = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"  # 40 chars, a legacy token
ARGILLA_PASSWORD = "hitl-test-password"
ARGILLA_API_KEY = "hitl-test-argilla-api-key"
