"""`distillery keys`: API keys for the gateway."""

from __future__ import annotations

import typer

from distillery import apikeys
from distillery.config import get_settings
from distillery.store.db import session_scope
from distillery_launcher.cli.common import fail, services

app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


@app.command()
def create(
    scopes: str = typer.Option("infer", help=f"Comma-separated, from: {', '.join(apikeys.SCOPES)}."),
    name: str = typer.Option("cli", help="A label for the key."),
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    try:
        wanted = apikeys.parse_scopes(scopes)
    except ValueError as exc:
        fail(f"--scopes: {exc}")
    s = get_settings()
    with services() as urls, session_scope(urls.database_url) as session:
        issued = apikeys.create_key(session, name, wanted, s.api_key_pepper, s.api_key_prefix)
    typer.echo(issued.key)
    typer.echo(
        f"key id {issued.key_id}, scopes {','.join(issued.scopes)} (shown once; store it now)", err=True
    )


@app.command("list")
def list_keys() -> None:
    """Key ids, names, scopes and whether revoked (never the keys)."""
    with services() as urls, session_scope(urls.database_url) as session:
        for k in apikeys.list_keys(session):
            state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "active"
            typer.echo(f"{k.key_id}  {k.name:<16} {','.join(k.scopes):<36} {state}")


@app.command()
def revoke(key_id: str) -> None:
    """Revoke a key by its id (the part after the prefix, before the second '_')."""
    with services() as urls, session_scope(urls.database_url) as session:
        if not apikeys.revoke_key(session, key_id):
            fail(f"no key with id '{key_id}' (see: distillery keys list)")
    typer.echo(f"revoked {key_id}")
