"""The `distillery` command line."""

from __future__ import annotations

import logging

import typer

from distillery import __version__
from distillery.config import get_settings
from distillery_launcher.cli import data, db, demo, keys, models, services, teachers, up
from distillery_launcher.cli import eval as eval_cli
from distillery_launcher.cli import experiments as experiments_cli
from distillery_launcher.cli import gateway as gateway_cli
from distillery_launcher.cli import jobs as jobs_cli
from distillery_launcher.cli import train as train_cli
from distillery_launcher.cli import trainer as trainer_cli
from distillery_launcher.cli import worker as worker_cli

app = typer.Typer(
    help="Distil several teacher LLMs into one small student (TinyLLM) and serve it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data.app, name="data")
app.add_typer(db.app, name="db")
app.add_typer(keys.app, name="keys")
app.add_typer(services.app, name="services")
app.add_typer(models.app, name="models")
app.add_typer(teachers.app, name="teachers")
app.command("up")(up.up)
app.command("demo")(demo.demo)
app.add_typer(jobs_cli.app, name="jobs")
app.command("worker")(worker_cli.worker)
app.command("train")(train_cli.train)
app.command("eval")(eval_cli.eval_command)
app.command("trainer")(trainer_cli.trainer)
app.command("gateway")(gateway_cli.gateway)
app.add_typer(experiments_cli.app, name="experiments")


@app.callback()
def main() -> None:
    logging.basicConfig(
        level=get_settings().log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # One INFO line per HTTP request drowns the progress bars of client commands.
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


if __name__ == "__main__":
    app()
