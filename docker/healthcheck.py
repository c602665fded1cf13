"""Container health checks, run by the images' HEALTHCHECK (stdlib + celery only).

python healthcheck.py http URL   # URL answers 2xx
python healthcheck.py celery     # the Celery node in this container answers a ping
python healthcheck.py broker     # Redis at REDIS_URL answers PING (for the trainer: its solo pool
                                 # trains in the main loop and answers no ping until the run ends)
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=4) as response:
        return 200 <= response.status < 300


def celery_ok() -> bool:
    from celery import Celery

    app = Celery(broker=os.environ["REDIS_URL"])
    host = socket.gethostname()
    # Nodes are named `<name>@<hostname>`; the container's hostname tells our node from the others.
    replies = app.control.ping(timeout=4.0) or []
    return any(node.split("@", 1)[-1] == host for reply in replies for node in reply)


def broker_ok() -> bool:
    import redis

    client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_connect_timeout=4, socket_timeout=4)
    try:
        return bool(client.ping())
    finally:
        client.close()


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "http":
        ok = http_ok(argv[1])
    elif argv == ["celery"]:
        ok = celery_ok()
    elif argv == ["broker"]:
        ok = broker_ok()
    else:
        print("usage: healthcheck.py http URL | celery | broker", file=sys.stderr)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception as exc:  # any failure is "unhealthy", with the reason in `docker inspect`
        print(f"unhealthy: {exc}", file=sys.stderr)
        sys.exit(1)
