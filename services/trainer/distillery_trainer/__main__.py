"""`python -m distillery_trainer [--loglevel L]`: the trainer, a Celery worker on queue `train`."""

from __future__ import annotations

import argparse
import logging

from distillery.queue import QUEUE_TRAIN


def worker_argv(loglevel: str = "INFO", hostname: str | None = None) -> list[str]:
    """Arguments of `celery worker`: one run at a time, in the worker process itself.

    The solo pool trains in the main process, so a killed trainer takes its run down with it (and the
    run's lock with its database connection), and torch never runs in a forked child.
    """
    argv = [
        "worker",
        "-Q",
        QUEUE_TRAIN,
        "--pool",
        "solo",
        "--concurrency",
        "1",
        "--prefetch-multiplier",
        "1",
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        argv += ["--hostname", hostname]
    return argv


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m distillery_trainer", description=__doc__)
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--hostname", default=None)
    args, extra = parser.parse_known_args(argv)
    # Celery leaves the root logger alone (worker_hijack_root_logger=False): run progress lines need it.
    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from distillery_trainer.celery_app import app

    app.worker_main([*worker_argv(args.loglevel, args.hostname), *extra])


if __name__ == "__main__":
    main()
