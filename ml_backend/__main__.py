"""``python -m ml_backend``: serve the backend with uvicorn (settings from HITL_* env)."""

from ml_backend.server import serve

if __name__ == "__main__":
    serve()
