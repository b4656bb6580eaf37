"""The model server: an OpenAI-compatible HTTP API over continuous batching."""
