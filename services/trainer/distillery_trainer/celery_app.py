"""The trainer's Celery app: the shared factory, URLs from the settings (DATABASE_URL / REDIS_URL)."""

from __future__ import annotations

from distillery.config import get_settings
from distillery.queue import QUEUE_TRAIN, make_celery
from distillery_trainer.settings import get_trainer_settings


def _require(value: str | None, name: str) -> str:
    if not value:
        raise RuntimeError(
            f"the trainer needs {name}; set it, or start the trainer with `distillery trainer`"
        )
    return value


settings = get_settings()
trainer_settings = get_trainer_settings()
REDIS_URL = _require(settings.redis_url, "REDIS_URL")
DATABASE_URL = _require(settings.database_url, "DATABASE_URL")

app = make_celery(REDIS_URL, name="distillery_trainer")
app.conf.task_default_queue = QUEUE_TRAIN
app.conf.broker_transport_options = {
    **(app.conf.broker_transport_options or {}),
    "visibility_timeout": trainer_settings.visibility_timeout,
}
app.conf.include = ["distillery_trainer.tasks"]
