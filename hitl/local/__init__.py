"""The local stack (``hitl up``/``hitl down``) and the launchers it and the tests use."""
