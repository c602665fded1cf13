"""distillery worker service."""
