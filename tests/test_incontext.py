import numpy as np
import pytest

from distillery.rationales.incontext import STRATEGIES, InContextSelector, default_embedder
from distillery.records import Example


def make_pool(n: int) -> list[Example]:
    return [
        Example(id=f"ex-{i}", question=f"question {i}?", options=("yes", "no"), answer=i % 2)
        for i in range(n)
    ]


def test_strategies_are_the_documented_three():
    assert STRATEGIES == ("random", "knn", "none")


def test_random_never_returns_the_example_itself():
    pool = make_pool(6)
    selector = InContextSelector(pool, "random", k=5, seed=3)
    for example in pool:
        chosen = selector.select(example)
        assert len(chosen) == 5
        assert example.id not in {c.id for c in chosen}
        assert len({c.id for c in chosen}) == 5


def test_random_is_reproducible_for_the_same_seed_and_independent_of_call_order_and_pool_order():
    pool = make_pool(50)
    first = InContextSelector(pool, "random", k=2, seed=7)
    picks = {e.id: [c.id for c in first.select(e)] for e in pool}
    second = InContextSelector(list(reversed(pool)), "random", k=2, seed=7)
    for example in reversed(pool):
        assert [c.id for c in second.select(example)] == picks[example.id]
    # Asking again (another worker, a retry) gives the same answer.
    assert [c.id for c in first.select(pool[0])] == picks[pool[0].id]


def test_random_differs_for_a_different_seed():
    pool = make_pool(50)
    a = InContextSelector(pool, "random", k=2, seed=0)
    b = InContextSelector(pool, "random", k=2, seed=1)
    assert [[c.id for c in a.select(e)] for e in pool] != [[c.id for c in b.select(e)] for e in pool]


def test_none_selects_nothing_whatever_k():
    selector = InContextSelector(make_pool(3), "none", k=2)
    assert selector.select(make_pool(3)[0]) == []


def test_unknown_strategy_names_the_accepted_values():
    with pytest.raises(ValueError, match="random, knn, none"):
        InContextSelector(make_pool(3), "bm25", k=1)


def test_k_larger_than_pool_minus_one_says_the_pool_size():
    with pytest.raises(ValueError, match="the pool has 3"):
        InContextSelector(make_pool(3), "random", k=3)


def test_duplicate_ids_in_the_pool_are_rejected():
    pool = make_pool(3) + make_pool(1)
    with pytest.raises(ValueError, match="duplicate"):
        InContextSelector(pool, "random", k=1)


# Hand-made 2-D embeddings: angles make the cosine order obvious, lengths differ to show that
# cosine (not dot product or distance) decides.
VECTORS = {
    "north": [0.0, 1.0],
    "north-by-east": [0.5, 5.0],
    "north-east": [3.0, 3.0],
    "east": [10.0, 0.0],
    "south": [0.0, -2.0],
}


def make_embedding_pool() -> tuple[list[Example], list[list[str]]]:
    pool = [Example(id=name, question=name, options=("a", "b"), answer=0) for name in VECTORS]
    calls: list[list[str]] = []
    return pool, calls


def test_knn_returns_nearest_neighbours_by_cosine_and_never_the_example_itself():
    pool, calls = make_embedding_pool()

    def embed(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.array([VECTORS[t] for t in texts])

    selector = InContextSelector(pool, "knn", k=2, embed=embed)
    by_id = {e.id: e for e in pool}
    assert [e.id for e in selector.select(by_id["north"])] == ["north-by-east", "north-east"]
    assert [e.id for e in selector.select(by_id["east"])] == ["north-east", "north-by-east"]
    assert [e.id for e in selector.select(by_id["south"])][0] not in {"south"}
    # The pool is embedded once, in one batch, however many selections follow.
    assert calls == [list(VECTORS)]


def test_knn_embeds_a_target_outside_the_pool_on_demand():
    pool, _ = make_embedding_pool()
    vectors = {**VECTORS, "almost-east": [9.0, 1.0]}
    selector = InContextSelector(pool, "knn", k=1, embed=lambda texts: np.array([vectors[t] for t in texts]))
    target = Example(id="new", question="almost-east", options=("a", "b"), answer=0)
    assert [e.id for e in selector.select(target)] == ["east"]


def test_knn_with_the_real_minilm_model_pairs_paraphrases():
    sentences = [
        "How do plants make food from sunlight?",
        "What process lets plants turn sunlight into food?",
        "Which planet is closest to the sun?",
        "What is the boiling point of water at sea level?",
        "Who wrote the play Romeo and Juliet?",
    ]
    pool = [Example(id=str(i), question=s, options=("a", "b"), answer=0) for i, s in enumerate(sentences)]
    selector = InContextSelector(pool, "knn", k=1, embed=default_embedder())
    assert [e.id for e in selector.select(pool[0])] == ["1"]
    assert [e.id for e in selector.select(pool[1])] == ["0"]
