"""`python -m distillery_worker [--concurrency N] [--loglevel L] [--pool P]`: a `rationales` worker."""

from __future__ import annotations

import argparse

from distillery.queue import QUEUE_RATIONALES


def worker_argv(concurrency: int = 4, loglevel: str = "INFO", pool: str = "threads") -> list[str]:
    """Arguments of `celery worker`. Teacher calls wait on the network, so threads are the default pool."""
    return [
        "worker",
        "-Q",
        QUEUE_RATIONALES,
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        loglevel,
        # Gossip and mingle only slow start-up; nothing here relies on them.
        "--without-gossip",
        "--without-mingle",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m distillery_worker", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--pool", default="threads", choices=["threads", "prefork", "solo"])
    args, extra = parser.parse_known_args(argv)
    from distillery_worker.celery_app import app

    app.worker_main([*worker_argv(args.concurrency, args.loglevel, args.pool), *extra])


if __name__ == "__main__":
    main()
