"""Teacher registry over HTTP: protocol (the contract) and serving (the logic); routes/teachers.py is thin."""
