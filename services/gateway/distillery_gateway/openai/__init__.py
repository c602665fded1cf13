"""OpenAI-compatible endpoints, laid out as vLLM lays out `vllm/entrypoints/openai`."""
