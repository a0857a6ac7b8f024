"""Benchmark of the service against a plain in-process FastAPI + insightface server."""
