"""Serving PPD: a FastChat model worker (OpenAI-compatible API through FastChat's controller and API server)."""
