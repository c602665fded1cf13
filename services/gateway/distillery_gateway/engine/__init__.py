"""The student engine: backends that generate (in-process transformers or a vLLM server), the
micro-batcher in front of the in-process one, and the manager that hot-swaps the served model."""
