"""distillery trainer service."""
