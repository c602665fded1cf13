"""Training runs: protocol (the contract) and serving (the logic); routes/training.py is the thin layer."""
