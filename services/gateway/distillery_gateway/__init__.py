"""distillery gateway service."""
