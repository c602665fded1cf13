"""The worker's Celery app: the shared factory, URLs from the settings (DATABASE_URL / REDIS_URL)."""

from __future__ import annotations

import logging

from distillery.config import get_settings
from distillery.queue import make_celery, require_setting
from distillery_worker.settings import get_worker_settings

settings = get_settings()
worker_settings = get_worker_settings()
REDIS_URL = require_setting(settings.redis_url, "REDIS_URL", "worker")
DATABASE_URL = require_setting(settings.database_url, "DATABASE_URL", "worker")

app = make_celery(REDIS_URL, name="distillery_worker")
app.conf.broker_transport_options = {
    **(app.conf.broker_transport_options or {}),
    "visibility_timeout": worker_settings.visibility_timeout,
    # Sweep for expired deliveries every `restore_interval` seconds (kombu's throttle would multiply it).
    "unacked_restore_interval": worker_settings.restore_interval,
    "unacked_restore_throttle": 1,
}
app.conf.include = ["distillery_worker.tasks", "distillery_worker.reconciler"]

# One line per teacher request at INFO drowns the worker's own progress lines.
logging.getLogger("httpx").setLevel(logging.WARNING)
