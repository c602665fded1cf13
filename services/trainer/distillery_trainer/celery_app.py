"""The trainer's Celery app: the shared factory, URLs from the settings (DATABASE_URL / REDIS_URL)."""

from __future__ import annotations

from distillery.config import get_settings
from distillery.queue import QUEUE_TRAIN, make_celery, require_setting
from distillery_trainer.settings import get_trainer_settings

settings = get_settings()
trainer_settings = get_trainer_settings()
REDIS_URL = require_setting(settings.redis_url, "REDIS_URL", "trainer")
DATABASE_URL = require_setting(settings.database_url, "DATABASE_URL", "trainer")

app = make_celery(REDIS_URL, name="distillery_trainer")
app.conf.task_default_queue = QUEUE_TRAIN
app.conf.broker_transport_options = {
    **(app.conf.broker_transport_options or {}),
    "visibility_timeout": trainer_settings.visibility_timeout,
}
app.conf.include = ["distillery_trainer.tasks"]
