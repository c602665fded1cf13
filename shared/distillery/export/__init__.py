"""A student taken to the tools users serve models with: GGUF for llama.cpp and Ollama."""

from distillery.export.gguf_convert import OUTTYPES, ExportError, GGUFExport, cached_export, export_gguf

__all__ = ["OUTTYPES", "ExportError", "GGUFExport", "cached_export", "export_gguf"]
