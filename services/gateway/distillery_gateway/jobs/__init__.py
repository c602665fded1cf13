"""Rationale jobs: protocol (the contract) and serving (the logic); routes/jobs.py is the thin layer."""
