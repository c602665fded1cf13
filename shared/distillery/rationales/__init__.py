"""The rationale half of the method: teacher-forced CoT prompts, in-context selection, rationale checks."""
