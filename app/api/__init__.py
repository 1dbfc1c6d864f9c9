"""The HTTP surface of the service: the FastAPI app, its routes, request and response schemas (the
OpenAI-compatible ones too), middleware, errors and the views that turn answers into responses."""
