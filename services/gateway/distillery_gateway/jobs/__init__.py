"""Rationale jobs: protocol (the contract), serving (the logic), api_router (the thin HTTP layer)."""
