"""The web dashboard at /ui: server-rendered pages over the same services the API routes use.

`routes.install(app)` wires it into the app; the browser's actions call the REST API with the session
cookie and a CSRF header (`session.py`), so scopes are enforced by the API's own checks.
"""
