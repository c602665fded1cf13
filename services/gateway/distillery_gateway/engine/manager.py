"""Which model this replica serves, and the hot swap to a newly promoted one.

`sync()` reads the registry (the production model, or the configured default when none is
promoted), loads a different target in the background and swaps it in with one assignment. Requests
hold a lease on the model they started with, so in-flight work finishes on the old model; the old
backend is closed when its last lease ends. A load that fails leaves the current model serving (it is
tried again a minute later).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime

from distillery.config import Settings
from distillery.modelhub import canonical_name, resolve_model
from distillery.store import models as m
from distillery.store import registry
from distillery.store.db import session_factory
from distillery_gateway.engine.backend import Backend
from distillery_gateway.engine.types import ModelNotReady
from distillery_gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)


class ModelNotFound(LookupError):
    """The request names a model this replica does not serve."""


DISABLED = ("", "none")
# A target that failed to load is tried again after this long (e.g. vLLM rolled out the model meanwhile).
RETRY_FAILED_S = 60.0
SERVED_ALIAS = "student"  # clients that want "the production student" whatever its name and version


def version_id(name: str, version: int) -> str:
    """The OpenAI `model` id of one registry version."""
    return f"{name}:v{version}"


@dataclass(frozen=True)
class ServedModel:
    """A model version as the API shows it: its id, the aliases that also reach it, where it lives."""

    id: str
    name: str
    path: str
    version: int | None = None
    registry_id: str | None = None
    created: int = 0
    promoted_at: datetime | None = None
    aliases: tuple[str, ...] = ()

    @property
    def all_aliases(self) -> tuple[str, ...]:
        """Its aliases plus `student`, the name that reaches whatever this replica serves."""
        return tuple(dict.fromkeys(a for a in (*self.aliases, SERVED_ALIAS) if a != self.id))

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.all_aliases)

    @property
    def key(self) -> tuple:
        """Identity for swapping: a re-promotion of the same row counts as new (and retries a failed load)."""
        return (self.registry_id, self.path, self.promoted_at)

    @classmethod
    def from_row(cls, row: m.Model) -> ServedModel:
        return cls(
            id=version_id(row.name, row.version),
            name=row.name,
            path=row.path,
            version=row.version,
            registry_id=row.id,
            created=int(row.created_at.timestamp()) if row.created_at else 0,
            promoted_at=row.promoted_at,
            aliases=(row.name,),
        )


@dataclass(eq=False)
class _Slot:
    model: ServedModel
    backend: Backend
    leases: int = 0
    retired: bool = False
    closing: asyncio.Task | None = field(default=None, repr=False)


BackendFactory = Callable[[ServedModel], Backend]


class ModelManager:
    """Holds the served model; swaps atomically on `sync()` when the registry says otherwise."""

    def __init__(
        self,
        settings: Settings,
        database_url: str,
        factory: BackendFactory,
        metrics: GatewayMetrics | None = None,
    ):
        self.settings = settings
        self.database_url = database_url
        self.factory = factory
        self.metrics = metrics
        self._slot: _Slot | None = None
        self._lock = asyncio.Lock()
        self._failed: dict[tuple, float] = {}  # target key -> when its load failed
        self.last_error: str | None = None
        self.loading: ServedModel | None = None
        self.nothing_to_serve = False

    # --- what is served -----------------------------------------------------------------------------

    @property
    def current(self) -> ServedModel | None:
        return self._slot.model if self._slot else None

    @property
    def ready(self) -> bool:
        """A model is being served, or none is configured (then the rest of the API is all there is)."""
        return self._slot is not None or self.nothing_to_serve

    @property
    def queue_depth(self) -> int:
        return self._slot.backend.queue_depth if self._slot else 0

    @property
    def running(self) -> int:
        return self._slot.backend.running if self._slot else 0

    @property
    def max_context(self) -> int | None:
        return self._slot.backend.codec.max_context if self._slot else None

    @property
    def backend_kind(self) -> str | None:
        return self._slot.backend.kind if self._slot else None

    def default_model(self) -> ServedModel | None:
        """What a fresh install serves: a modelhub name or HF dir (`settings.default_model`; "none")."""
        wanted = self.settings.default_model.strip()
        if wanted.lower() in DISABLED:
            return None
        name = canonical_name(wanted) or wanted.rstrip("/").rsplit("/", 1)[-1]
        return ServedModel(id=name, name=name, path=wanted)

    def target(self) -> ServedModel | None:
        """The model this replica should serve now, read from the registry."""
        with session_factory(self.database_url)() as session:
            row = registry.production_model(session, self.settings.served_model_name)
            return ServedModel.from_row(row) if row is not None else self.default_model()

    # --- swapping ------------------------------------------------------------------------------------

    async def sync(self) -> bool:
        """Serve the registry's target; True when a new model was swapped in."""
        async with self._lock:
            target = await asyncio.to_thread(self.target)
            self.nothing_to_serve = target is None and self._slot is None
            if target is None:
                return False
            if self._slot is not None and self._slot.model.key == target.key:
                return False
            failed_at = self._failed.get(target.key)
            if failed_at is not None and time.monotonic() - failed_at < RETRY_FAILED_S:
                return False
            return await self._swap_to(target)

    async def _swap_to(self, target: ServedModel) -> bool:
        self.loading = target
        try:
            backend = await asyncio.to_thread(self._build, target)
        except Exception as exc:
            self._failed[target.key] = time.monotonic()
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error(
                "loading %s from %s failed; still serving %s: %s",
                target.id,
                target.path,
                self.current.id if self.current else "nothing",
                self.last_error,
            )
            if self.metrics:
                self.metrics.swaps.labels("failed").inc()
            return False
        finally:
            self.loading = None
        old, self._slot = self._slot, _Slot(target, backend)  # the swap: one assignment
        self.last_error = None
        log.info("serving %s (%s backend) from %s", target.id, backend.kind, target.path)
        if self.metrics:
            self.metrics.swaps.labels("loaded").inc()
            self.metrics.served(target.id, target.name, target.version, backend.kind)
        if old is not None:
            old.retired = True
            self._maybe_close(old)
        return True

    def _build(self, target: ServedModel) -> Backend:
        path = target.path
        if target.registry_id is None:  # the default: a modelhub name is converted once, here
            path = str(resolve_model(path, self.settings))
        return self.factory(replace(target, path=path))

    def _maybe_close(self, slot: _Slot) -> None:
        if slot.retired and slot.leases == 0 and slot.closing is None:
            slot.closing = asyncio.get_running_loop().create_task(self._close(slot))

    async def _close(self, slot: _Slot) -> None:
        try:
            await slot.backend.aclose()
        except Exception:
            log.exception("closing the backend of %s failed", slot.model.id)

    # --- using it ------------------------------------------------------------------------------------

    def resolve(self, requested: str | None) -> ServedModel:
        """The served model `requested` names (None = the served one); ModelNotFound otherwise."""
        slot = self._slot
        if slot is None:
            if self.nothing_to_serve:
                raise ModelNotReady("no model is promoted and no default model is configured")
            wanted = self.loading.id if self.loading else "the model"
            raise ModelNotReady(f"{wanted} is still loading; retry shortly")
        if requested is not None and requested not in slot.model.names:
            raise ModelNotFound(requested)
        return slot.model

    @asynccontextmanager
    async def lease(self, requested: str | None = None) -> AsyncIterator[tuple[ServedModel, Backend]]:
        """The served model and its backend, kept alive until the block ends (even across a swap)."""
        self.resolve(requested)
        slot = self._slot
        assert slot is not None
        slot.leases += 1
        try:
            yield slot.model, slot.backend
        finally:
            slot.leases -= 1
            self._maybe_close(slot)

    async def aclose(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.retired = True
            if slot.closing is None:
                await self._close(slot)
