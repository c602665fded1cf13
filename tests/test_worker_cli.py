"""`distillery worker`: option checks name the accepted values before anything starts."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from distillery_launcher.cli.worker import worker


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(worker)
    return app


def test_unknown_pool_is_rejected_naming_the_accepted_pools() -> None:
    result = CliRunner().invoke(cli(), ["--pool", "gevent"])
    assert result.exit_code == 2
    assert "--pool 'gevent'" in result.output and "threads, prefork, solo" in result.output


def test_unknown_log_level_is_rejected() -> None:
    result = CliRunner().invoke(cli(), ["--loglevel", "loud"])
    assert result.exit_code == 2
    assert "--loglevel" in result.output and "INFO" in result.output


def test_concurrency_must_be_positive() -> None:
    result = CliRunner().invoke(cli(), ["--concurrency", "0"])
    assert result.exit_code == 2
    assert "--concurrency" in result.output
