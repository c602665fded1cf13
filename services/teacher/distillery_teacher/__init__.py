"""distillery teacher service."""
