"""Dataset validation and idempotent import into PostgreSQL."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select

from distillery.config import Settings
from distillery.datasets import DatasetError, dataset_file, load_jsonl, sample_file
from distillery.store import examples as ex_store
from distillery.store import models as m
from distillery.store.db import session_scope

SHARED = Settings().datasets_dir
NAMES = ("obqa", "arc", "piqa", "riddle", "pubmedqa", "bioasq")


def readme_counts() -> dict[tuple[str, str], int]:
    """Train/dev line counts as ../shared/datasets/README.md states them."""
    counts = {}
    for line in (SHARED / "README.md").read_text().splitlines():
        cells = [c.strip(" `") for c in line.split("|")]
        if len(cells) > 6 and cells[1] in NAMES:
            counts[(cells[1], "train")] = int(cells[4])
            counts[(cells[1], "dev")] = int(cells[5])
    return counts


needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/datasets not present")


def write(path: Path, records: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


GOOD = {
    "id": "q1",
    "question": "Which is a metal?",
    "options": ["iron", "wood"],
    "answer": 0,
    "context": None,
}


def test_valid_file_loads(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", [GOOD, {**GOOD, "id": "q2", "answer": 1}])
    examples = load_jsonl(path)
    assert [e.id for e in examples] == ["q1", "q2"]
    assert examples[1].gold == "wood"


def test_every_problem_is_reported_with_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bad.jsonl",
        [
            GOOD,
            {**GOOD, "id": "q2", "answer": 5},  # line 2: answer outside options
            {**GOOD, "id": "q3", "options": ["only one"]},  # line 3: < 2 options
            "{not json",  # line 4
            {**GOOD, "id": "q1"},  # line 5: duplicate id
            {"id": "q6", "options": ["a", "b"], "answer": 0},  # line 6: missing question
            {**GOOD, "id": "q7", "answer": "0"},  # line 7: wrong type
        ],
    )
    with pytest.raises(DatasetError) as info:
        load_jsonl(path)
    lines = sorted(p.line for p in info.value.problems)
    assert lines == [2, 3, 4, 5, 6, 7]
    text = str(info.value)
    assert f"{path}:2:" in text and "answer" in text and "0..1" in text
    assert "duplicate id 'q1'" in text and "missing required field 'question'" in text


def test_import_is_idempotent_and_rejects_bad_files_whole(clean_db: str, tmp_path: Path) -> None:
    examples = load_jsonl(sample_file("arc", "train"))
    with session_scope(clean_db) as s:
        first = ex_store.import_examples(s, "arc", "train", examples)
    with session_scope(clean_db) as s:
        again = ex_store.import_examples(s, "arc", "train", examples)
        assert ex_store.count_examples(s, "arc", "train") == len(examples)
    assert first.inserted == len(examples)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, len(examples))


def test_cli_rejects_three_broken_lines_and_writes_nothing(
    settings: Settings, tmp_path: Path, monkeypatch
) -> None:
    from typer.testing import CliRunner

    from distillery_launcher.cli.main import app

    for key, value in {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "DISTILLERY_HOME": str(settings.home),
    }.items():
        monkeypatch.setenv(key, value)
    from distillery.config import get_settings

    get_settings.cache_clear()
    lines = sample_file("obqa", "dev").read_text().splitlines()[:20]
    for i in (3, 9, 14):  # break lines 4, 10 and 15 in three different ways
        record = json.loads(lines[i])
        if i == 3:
            record["answer"] = 9
        elif i == 9:
            del record["options"]
        else:
            record["id"] = json.loads(lines[0])["id"]
        lines[i] = json.dumps(record)
    path = write(tmp_path / "broken.jsonl", lines)
    runner = CliRunner()
    result = runner.invoke(app, ["data", "import", str(path), "--name", "obqa", "--split", "dev"])
    assert result.exit_code == 2, result.output
    found = sorted(int(n) for n in re.findall(rf"{re.escape(str(path))}:(\d+):", result.output))
    assert found == [4, 10, 15]
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(func.count()).select_from(m.Example)) == 0
        assert s.scalar(select(func.count()).select_from(m.Dataset)) == 0

    good = write(tmp_path / "good.jsonl", sample_file("obqa", "dev").read_text().splitlines()[:20])
    ok = runner.invoke(app, ["data", "import", str(good), "--name", "obqa", "--split", "dev"])
    assert ok.exit_code == 0, ok.output
    assert "20 new" in ok.output
    bad_split = runner.invoke(app, ["data", "import", str(good), "--name", "obqa", "--split", "val"])
    assert bad_split.exit_code == 2 and "train, dev, test" in bad_split.output
    get_settings.cache_clear()


@needs_shared
def test_all_six_shared_datasets_import_with_readme_counts(clean_db: str) -> None:
    counts = readme_counts()
    assert len(counts) == 12
    with session_scope(clean_db) as s:
        for (name, split), expected in counts.items():
            result = ex_store.import_examples(s, name, split, load_jsonl(dataset_file(name, split, SHARED)))
            assert result.inserted == expected, (name, split)
    with session_scope(clean_db) as s:
        for (name, split), expected in counts.items():
            assert ex_store.count_examples(s, name, split) == expected
        again = ex_store.import_examples(s, "arc", "dev", load_jsonl(dataset_file("arc", "dev", SHARED)))
        assert again.inserted == again.updated == 0
        assert s.scalar(select(func.count()).select_from(m.Example)) == sum(counts.values())
