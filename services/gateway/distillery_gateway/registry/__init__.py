"""The model registry: list, register and promote student versions (hot swap)."""
