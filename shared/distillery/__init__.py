"""distillery: distil several teacher LLMs into one small student (TinyLLM) and serve it."""

__version__ = "0.1.0"
