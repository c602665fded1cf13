"""In-context demonstrations for a chunk: examples from the job's pool, rationales from a seed set.

The pool is the job's dataset split. A demonstration's rationale is a stored rationale of that pool
example from a precomputed teacher (imported paper rationales, say), preferring complete ones that agree
with the gold answer; without one the demonstration goes without a rationale.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from distillery.rationales.incontext import InContextSelector
from distillery.records import Demonstration, Example
from distillery.store import examples as ex_store
from distillery.store import models as m

_CACHE_SIZE = 8
_selectors: OrderedDict[tuple, InContextSelector] = OrderedDict()
_lock = threading.Lock()


def selector_for(session: Session, job: m.RationaleJob) -> InContextSelector:
    """The job's selector, built once per worker process (a kNN index is costly) and reused by chunks."""
    spec = job.params.get("in_context", {})
    strategy, k, seed = spec.get("strategy", "none"), int(spec.get("k", 0)), int(spec.get("seed", 0))
    # The pool size is part of the key: examples imported later give a new pool, hence a new selector.
    pool_size = ex_store.split_size(session, job.dataset_id, job.split)
    key = (job.dataset_id, job.split, strategy, k, seed, pool_size)
    with _lock:
        if key in _selectors:
            _selectors.move_to_end(key)
            return _selectors[key]
    pool = _load_pool(session, job.dataset_id, job.split)
    selector = InContextSelector(pool, strategy, k, seed)
    with _lock:
        _selectors[key] = selector
        while len(_selectors) > _CACHE_SIZE:
            _selectors.popitem(last=False)
    return selector


def _load_pool(session: Session, dataset_id: int, split: str) -> list[Example]:
    stmt = (
        select(m.Example)
        .where(m.Example.dataset_id == dataset_id, m.Example.split == split)
        .order_by(m.Example.id)
        .execution_options(yield_per=1000)
    )
    return [ex_store.to_record(row) for row in session.scalars(stmt)]


def seed_rationales(session: Session, dataset_id: int, external_ids: set[str]) -> dict[str, str]:
    """Best stored precomputed-teacher rationale per example external id (complete, agreeing, first)."""
    if not external_ids:
        return {}
    r = m.Rationale
    stmt = (
        select(m.Example.external_id, r.text)
        .join(m.Example, m.Example.id == r.example_id)
        .join(m.Teacher, m.Teacher.id == r.teacher_id)
        .where(
            m.Teacher.backend == "precomputed",
            m.Example.dataset_id == dataset_id,
            m.Example.external_id.in_(sorted(external_ids)),
            func.length(func.trim(r.text)) > 0,
        )
        .order_by(
            m.Example.external_id,
            r.truncated,
            case((r.agrees_with_gold.is_(False), 1), else_=0),
            m.Teacher.name,
            r.sample_index,
        )
    )
    best: dict[str, str] = {}
    for external_id, text in session.execute(stmt):
        best.setdefault(external_id, text)
    return best


def demonstrations_for(
    session: Session, job: m.RationaleJob, examples: list[Example]
) -> dict[str, list[Demonstration]]:
    """Demonstrations per example id, in the selector's order."""
    selector = selector_for(session, job)
    chosen = {example.id: selector.select(example) for example in examples}
    needed = {demo.id for demos in chosen.values() for demo in demos}
    texts = seed_rationales(session, job.dataset_id, needed)
    return {
        example_id: [Demonstration(demo, texts.get(demo.id, "")) for demo in demos]
        for example_id, demos in chosen.items()
    }
