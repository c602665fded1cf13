"""The rationale half of the method: teacher-forced CoT prompts, in-context selection, rationale checks,
and the rationale exchange format (`exchange`, parsed without a database)."""
