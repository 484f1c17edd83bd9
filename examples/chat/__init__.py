"""The chat example: a FastAPI WebSocket chat served by gunicorn behind HAProxy (PROXY v2)."""
