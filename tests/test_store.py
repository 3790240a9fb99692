"""The results store keeps every run's config readable while it shrinks (benchmarks/store.py)."""

from __future__ import annotations

import importlib
import sqlite3
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _store():
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.append(str(ROOT / "benchmarks"))
    return importlib.import_module("store")


def _record(store, path: Path, seed: int, epochs: int) -> None:
    config = {"seed": seed, "train": {"epochs": epochs}}
    store.record(benchmark="test", metrics={"dice": 0.5 + seed / 100}, config=config, path=path,
                 method="none", seed=seed)


def test_compact_keeps_every_config_and_metric_and_shrinks_the_file(tmp_path: Path) -> None:
    store = _store()
    path = tmp_path / "store.sqlite"
    for seed in range(30):
        _record(store, path, seed, epochs=1 + seed % 3)
    before_rows = store.rows(path)
    configs = {r["id"]: store.config_of(r["id"], path) for r in before_rows}
    assert configs[before_rows[3]["id"]]["seed"] == 3

    old, new = store.compact(path)

    assert new < old
    assert store.rows(path) == before_rows
    assert {i: store.config_of(i, path) for i in configs} == configs
    with sqlite3.connect(path) as db:
        assert db.execute("select count(*) from dictionaries").fetchone()[0] == 1
        dictionary, = db.execute("select distinct config_dictionary from runs").fetchone()
        blob = db.execute("select config from runs limit 1").fetchone()[0]
    assert dictionary is not None
    try:  # a blob compressed against the dictionary is not readable without it
        zlib.decompress(blob)
        raise AssertionError("compact() left a config compressed without its dictionary")
    except zlib.error:
        pass
    # a run stored after compact() is compressed against the same dictionary and reads back
    _record(store, path, 99, epochs=7)
    newest = store.rows(path, seed=99)[0]
    assert store.config_of(newest["id"], path)["train"]["epochs"] == 7
    store.compact(path)  # twice: the first dictionary is dropped, nothing is lost
    assert {i: store.config_of(i, path) for i in configs} == configs
    with sqlite3.connect(path) as db:
        assert db.execute("select count(*) from dictionaries").fetchone()[0] == 1


def test_a_store_written_before_dictionaries_still_reads_and_takes_new_runs(tmp_path: Path) -> None:
    store = _store()
    path = tmp_path / "old.sqlite"
    _record(store, path, 1, epochs=2)
    with sqlite3.connect(path) as db:  # the schema of a store written before this change
        db.execute("drop table dictionaries")
        db.execute("alter table runs drop column config_dictionary")
    assert store.config_of(store.rows(path)[0]["id"], path)["train"]["epochs"] == 2
    _record(store, path, 2, epochs=3)
    assert [r["seed"] for r in store.rows(path)] == [1, 2]


def test_merge_adds_the_other_store_s_new_runs_once_with_their_configs(tmp_path: Path) -> None:
    store = _store()
    ours, theirs = tmp_path / "ours.sqlite", tmp_path / "theirs.sqlite"
    for seed in range(3):
        _record(store, ours, seed, epochs=1)
    store.compact(ours)
    for seed in range(2, 5):  # seed 2 is in both stores, the same run
        _record(store, theirs, seed, epochs=1 if seed == 2 else seed)
    store.compact(theirs)  # its own dictionary

    assert store.merge(theirs, ours) == 2
    assert store.merge(theirs, ours) == 0  # again: nothing twice
    rows = store.rows(ours)
    assert sorted(r["seed"] for r in rows) == [0, 1, 2, 3, 4]
    by_seed = {r["seed"]: store.config_of(r["id"], ours) for r in rows}
    assert by_seed[4]["train"]["epochs"] == 4 and by_seed[2]["train"]["epochs"] == 1


def test_a_copy_without_git_must_be_told_its_code_state(tmp_path: Path, monkeypatch) -> None:
    import pytest

    store = _store()
    monkeypatch.setattr(store, "ROOT", tmp_path)  # not a git checkout (the GPU machine's copy)
    monkeypatch.delenv(store.CODE_STATE_ENV, raising=False)
    store.code_state.cache_clear()
    try:
        with pytest.raises(SystemExit, match="NOISYSEG_CODE_STATE"):
            store.code_state()
        monkeypatch.setenv(store.CODE_STATE_ENV, "abc123 clean")
        store.code_state.cache_clear()
        assert store.code_state() == ("abc123", "clean")
    finally:
        store.code_state.cache_clear()


def test_record_refuses_to_be_handed_the_stored_config_columns(tmp_path: Path) -> None:
    import pytest

    store = _store()
    with pytest.raises(TypeError, match="config_dictionary"):
        store.record(benchmark="test", metrics={}, path=tmp_path / "s.sqlite", config_dictionary=1)


def test_a_recipe_s_last_stage_is_stored_once_and_reads_back_as_recorded(tmp_path: Path) -> None:
    store = _store()
    path = tmp_path / "store.sqlite"
    last = {"dice": 0.8, "iou": 0.7, "seconds": 3.0, "offset": float("nan")}
    metrics = {**last, "best_dice": 0.81, "stages": {"1-train": {"dice": 0.7, "iou": 0.6},
                                                      "2-finetune": dict(last)}}
    row = store.record(benchmark="test", metrics=metrics, config={"seed": 1}, path=path, seed=1)
    with sqlite3.connect(path) as db:
        text, = db.execute("select metrics from runs").fetchone()
    assert text.count('"iou": 0.7') == 1 and '"top_level_except": ["best_dice"]' in text
    assert store.rows(path)[0]["metrics"] == row["metrics"]          # NaN stored as null
    assert row["metrics"]["stages"]["2-finetune"] == {**last, "offset": None}
    with sqlite3.connect(path) as db:  # a row stored before: compact and merge pack it too
        db.execute("update runs set metrics = ?", (store.json.dumps(row["metrics"]),))
    store.compact(path)
    assert store.rows(path)[0]["metrics"] == row["metrics"]
    with sqlite3.connect(path) as db:
        assert db.execute("select metrics from runs").fetchone()[0] == text
        db.execute("update runs set metrics = ?", (store.json.dumps(row["metrics"]),))
    other = tmp_path / "other.sqlite"
    assert store.merge(path, other) == 1
    with sqlite3.connect(other) as db:
        assert db.execute("select metrics from runs").fetchone()[0] == text


def test_archiving_moves_old_runs_to_a_file_of_their_own_and_every_reader_still_sees_them(
        tmp_path: Path) -> None:
    import subprocess

    import pytest

    store = _store()
    path = tmp_path / "store.sqlite"
    for day in range(1, 7):
        store.record(benchmark="test", metrics={"dice": day / 10}, config={"seed": day},
                     path=path, seed=day, date=f"2026-11-0{day}T12:00:00+00:00")
    before = store.rows(path)
    configs = {r["id"]: store.config_of(r["id"], path) for r in before}

    target, moved = store.archive("2026-11-04", path)

    assert (target.name, moved) == ("store.archive-1.sqlite", 3)
    assert store.archives(path) == [target]
    with sqlite3.connect(path) as db:
        assert db.execute("select count(*) from runs").fetchone()[0] == 3
    assert store.rows(path) == before  # ids, order and metrics as they were
    assert {i: store.config_of(i, path) for i in configs} == configs
    assert store.rows(path, seed=[1, 6])[0]["metrics"] == {"dice": 0.1}
    assert store.done(store.digest({"seed": 1}), path)["seed"] == 1  # an archived run is not rerun
    _record(store, path, 7, epochs=1)  # a new run never takes an archived id
    assert store.rows(path, seed=7)[0]["id"] > max(configs)
    with pytest.raises(SystemExit, match="newest"):
        store.archive("2100-01-01", path)
    with pytest.raises(SystemExit, match="no run"):
        store.archive("2026-11-01", path)
    assert store.archive("2026-11-05", path)[0].name == "store.archive-2.sqlite"
    assert [r["seed"] for r in store.rows(path)] == [1, 2, 3, 4, 5, 6, 7]
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "store.py"), "--store",
                          str(path), "--sql", "select count(*) as n from all_runs"],
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["n", "7"]
