"""The one results store of every benchmark run: an SQLite file, benchmarks/results/results.sqlite.

Why SQLite: it is in Python's standard library (nothing to install or serve), one file that git
keeps beside the code, queried with SQL (``sqlite3 benchmarks/results/results.sqlite``; the
metrics are JSON, read with ``json_extract``), and it enforces what a CSV cannot: a run is
stored once (a UNIQUE key) and a write is all or nothing (a transaction).

One row per run: which benchmark ran it and with which preset, the dataset, the noise (a label
and its options), the rate, the method (a recipe name, optionally with component picks, e.g.
``none+reweighter=oracle``), the seed, every final metric (JSON; a recipe's stages inside), the
digest of the resolved config and the config itself, the git commit and whether the tree had
uncommitted changes (then a digest of them), the torch version, the device, the seconds and the
date. The same config digest on the same commit and tree is one row: a benchmark asks
:func:`done` before running and :func:`record` ignores a second copy. Results of other commits
stay beside it. A benchmark that measures something else than a run of the config (the audit's
detection scores, say) passes its own settings as ``options``: they enter the digest, so its
row is not taken for a plain run of the same config.

    python benchmarks/store.py                  # what the store holds, per benchmark and commit
    python benchmarks/store.py --sql "select method, count(*) from runs group by method"
    python benchmarks/store.py --merge OTHER    # add the runs of a store written elsewhere
    python benchmarks/store.py --compact        # shrink it before committing (configs compressed
                                                # against a dictionary of stored configs)
    python benchmarks/store.py --archive-before 2026-12-01   # move older runs to an archive file

Archives keep a committed file under 2 MiB: results.archive-1.sqlite, -2, ... beside the store,
each a store of its own that is never written again. :func:`rows`, :func:`done` and
:func:`config_of` read the store and its archives as one (a row keeps its id when archived, and
the store never hands out an archived id again); ``--sql`` queries them as one through the view
``all_runs``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import json
import math
import os
import sqlite3
import subprocess
import sys
import zlib
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STORE = HERE / "results" / "results.sqlite"
#: set it to write somewhere else (the tests do)
STORE_ENV = "NOISYSEG_RESULTS_STORE"
#: "<commit> <tree>" of a copy of the checkout without its .git folder (the GPU machine's):
#: the code state its rows are stored with
CODE_STATE_ENV = "NOISYSEG_CODE_STATE"


def store_path() -> Path:
    """The store's file: benchmarks/results/results.sqlite, or $NOISYSEG_RESULTS_STORE."""
    return Path(os.environ.get(STORE_ENV) or STORE)


def archives(path: Path | None = None) -> list[Path]:
    """The store's archive files (``<name>.archive-<n>.sqlite`` beside it), oldest first."""
    path = path or store_path()
    found = path.parent.glob(f"{path.stem}.archive-*{path.suffix}")
    return sorted((f for f in found if _archive_number(f) is not None), key=_archive_number)


def _archive_number(file: Path) -> int | None:
    """n of ``<name>.archive-<n>.sqlite``; None for a file not named so."""
    number = file.stem.rpartition("-")[2]
    return int(number) if number.isdigit() else None


def _files(path: Path | None) -> list[Path]:
    """The store and its archives, the store first (the files that exist)."""
    path = path or store_path()
    return [f for f in (path, *archives(path)) if f.exists()]

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    benchmark TEXT NOT NULL,          -- the script that ran it (accuracy, noise_suite, grid, ...)
    preset TEXT,                      -- its size: cpu, paper, smoke, ...
    dataset TEXT,                     -- a label (the preset gives its options)
    noise TEXT,                       -- a label, e.g. dilation, alphabeta-a0.5-b0.5
    noise_options TEXT,               -- JSON
    rate REAL,                        -- share of images corrupted (0: the clean-label run)
    method TEXT,                      -- recipe name, optionally + component picks
    recipe TEXT,
    seed INTEGER,
    dice REAL,                        -- the final test Dice (also in metrics)
    metrics TEXT NOT NULL,            -- JSON: every final metric, a recipe's stages inside
                                      -- (its last stage's metrics kept once, see _pack())
    config_digest TEXT NOT NULL,      -- sha256 of the resolved config without its output section
                                      -- (and of a benchmark's options, see digest())
    config BLOB,                      -- that config, JSON, zlib-compressed (with the dictionary
                                      -- config_dictionary names, when not NULL)
    git_commit TEXT NOT NULL,         -- HEAD when the run started ('unknown' for migrated rows)
    git_tree TEXT NOT NULL,           -- 'clean', or 'dirty-<digest of the uncommitted changes>'
    torch_version TEXT,
    device TEXT,
    seconds REAL,
    date TEXT,                        -- ISO date and time the row was written (UTC)
    note TEXT,                        -- e.g. where a migrated row came from
    config_dictionary INTEGER REFERENCES dictionaries (id),
    UNIQUE (config_digest, git_commit, git_tree)
);
-- zlib preset dictionaries (stored configs, concatenated, zlib-compressed themselves): the
-- configs of two runs differ in a few values, so each compresses to a tenth of its size against
-- them (see compact())
CREATE TABLE IF NOT EXISTS dictionaries (
    id INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
"""
COLUMNS = ("benchmark", "preset", "dataset", "noise", "noise_options", "rate", "method", "recipe",
           "seed", "dice", "metrics", "config_digest", "config", "git_commit", "git_tree",
           "torch_version", "device", "seconds", "date", "note", "config_dictionary")
#: the most of its stored configs a dictionary holds (zlib reads at most 32 KiB of it)
DICTIONARY_BYTES = 32 * 1024
#: a recipe's stage stored as {FINAL_STAGE: [keys]}: its metrics are the top level's but those keys
FINAL_STAGE = "top_level_except"


@contextmanager
def connect(path: Path | None = None, write: bool = False) -> Iterator[sqlite3.Connection]:
    """The store, created when missing; one transaction, committed when the block ends (with
    ``write``, holding the write lock from its start: a compaction cannot change the
    dictionaries between a config's compression and its row)."""
    path = path or store_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, timeout=60)) as db:
        db.row_factory = sqlite3.Row
        db.executescript(SCHEMA)
        if "config_dictionary" not in {c[1] for c in db.execute("PRAGMA table_info(runs)")}:
            db.execute("ALTER TABLE runs ADD COLUMN config_dictionary INTEGER "
                       "REFERENCES dictionaries (id)")  # a store written before dictionaries
        with db:
            if write:
                db.execute("BEGIN IMMEDIATE")
            yield db


@functools.lru_cache(maxsize=1)
def code_state() -> tuple[str, str]:
    """(commit, tree) of the checkout the benchmark runs from: the tree is 'clean', or 'dirty-'
    and a digest of ``git diff HEAD`` plus the untracked files' names (so two different dirty
    states are two states). Read once per process, when the first run starts."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  check=False).stdout
        except FileNotFoundError:  # no git on this machine
            return ""

    given = os.environ.get(CODE_STATE_ENV)
    if given:
        commit, _, tree = given.partition(" ")
        return commit, tree or "clean"
    if git("rev-parse", "--is-inside-work-tree").strip() != "true":
        raise SystemExit(f"{ROOT} is not a git checkout, so the store cannot tell which code its "
                         f"runs are of: set {CODE_STATE_ENV}='<commit> <tree>' (e.g. "
                         "'$(git rev-parse HEAD) clean', taken where the checkout came from)")
    commit = git("rev-parse", "HEAD").strip() or "unknown"
    diff = git("diff", "HEAD", "--", ".", ":(exclude)benchmarks/results")
    untracked = git("ls-files", "--others", "--exclude-standard", "--", ".",
                    ":(exclude)benchmarks/results")
    if not diff and not untracked:
        return commit, "clean"
    return commit, "dirty-" + hashlib.sha256((diff + untracked).encode()).hexdigest()[:12]


def resolved(config: dict[str, Any]) -> dict[str, Any]:
    """The config as a run resolves it (every component's options filled in), without its
    output section (where a run writes does not change its result)."""
    from noisyseg.build import build_components, with_options
    from noisyseg.config import resolve
    from noisyseg.plugins import Registry

    cfg = resolve(config)
    data = with_options(cfg, build_components(cfg, Registry(_plugin_manager()))).model_dump(mode="json")
    data.pop("output", None)
    return data


@functools.lru_cache(maxsize=1)
def _plugin_manager() -> Any:
    from noisyseg.plugins import build_plugin_manager

    return build_plugin_manager()


def digest(config: dict[str, Any], options: dict[str, Any] | None = None) -> str:
    """sha256 of the resolved config (:func:`resolved`), keys sorted; with ``options`` (what
    else than the config sets a benchmark's result, e.g. ``{"benchmark": "audit", "folds": 3}``),
    of both."""
    return _digest(resolved(config), options)


def _digest(data: dict[str, Any], options: dict[str, Any] | None) -> str:
    payload = data if options is None else {"config": data, "options": options}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def done(config_digest: str, path: Path | None = None) -> dict[str, Any] | None:
    """The stored row of this config on this commit and tree (in the store or an archive), or
    None."""
    commit, tree = code_state()
    for file in _files(path):
        with connect(file) as db:
            row = db.execute("SELECT * FROM runs WHERE config_digest = ? AND git_commit = ? AND "
                             "git_tree = ?", (config_digest, commit, tree)).fetchone()
        if row is not None:
            return _row(row)
    return None


def record(*, benchmark: str, metrics: dict[str, Any], config: dict[str, Any] | None = None,
           options: dict[str, Any] | None = None, path: Path | None = None,
           **fields: Any) -> dict[str, Any]:
    """Store one run (a second copy of the same config and ``options``, see :func:`digest`, on
    the same commit and tree is ignored) and return its row. ``fields``: preset, dataset, noise,
    noise_options, rate, method, recipe, seed, seconds, device, note (any may be left out, e.g.
    by a speed benchmark)."""
    import torch

    unknown = set(fields) - set(COLUMNS) | {"config", "config_dictionary"} & set(fields)
    if unknown:
        raise TypeError(f"record(): unknown fields {sorted(unknown)}")
    commit, tree = code_state()
    data = resolved(config) if config is not None else None
    row = {
        **dict.fromkeys(COLUMNS), **fields,
        "benchmark": benchmark,
        "dice": _finite(metrics.get("dice")),
        "metrics": _pack(metrics),
        "config_digest": (_digest(data, options) if data is not None
                          else _metrics_digest(benchmark, fields)),
        "git_commit": fields.get("git_commit", commit),
        "git_tree": fields.get("git_tree", tree),
        "torch_version": fields.get("torch_version", torch.__version__),
        "date": fields.get("date", datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")),
    }
    if isinstance(row["noise_options"], dict):
        row["noise_options"] = json.dumps(row["noise_options"], sort_keys=True)
    with connect(path, write=True) as db:
        if data is not None:
            row["config_dictionary"], row["config"] = _compress(db, data)
        _insert(db, row)
    return {**row, "metrics": _json_safe(metrics)}


def _insert(db: sqlite3.Connection, row: dict[str, Any], row_id: int | None = None) -> int:
    """Store a row (every column of COLUMNS; under ``row_id`` when given) unless the store holds
    its run; 1 if it was added."""
    columns = ("id", *COLUMNS) if row_id is not None else COLUMNS
    values = [row_id] * (row_id is not None) + [row[c] for c in COLUMNS]
    return db.execute(f"INSERT OR IGNORE INTO runs ({', '.join(columns)}) VALUES "
                      f"({', '.join('?' * len(columns))})", values).rowcount


def _pack(metrics: dict[str, Any]) -> str:
    """The stored JSON of a run's metrics. A recipe's top level is its last stage's metrics (and
    what the benchmark added, e.g. best_dice): that stage is kept once, as {FINAL_STAGE: the top
    level's keys it lacks}, which :func:`_unpack` expands again to exactly what it was."""
    metrics = _unpack(_json_safe(metrics))
    stages = metrics.get("stages")
    top = {k: v for k, v in metrics.items() if k != "stages"}
    if isinstance(stages, dict):
        same = [name for name, stage in stages.items() if isinstance(stage, dict)
                and stage.keys() <= top.keys() and all(top[k] == v for k, v in stage.items())]
        if len(same) == 1:
            stages = {**stages, same[0]: {FINAL_STAGE: sorted(top.keys() - stages[same[0]].keys())}}
            metrics = {**metrics, "stages": stages}
    return json.dumps(metrics, sort_keys=True)


def _unpack(metrics: dict[str, Any]) -> dict[str, Any]:
    """A run's metrics as recorded, from their stored form (see :func:`_pack`)."""
    stages = metrics.get("stages")
    if not isinstance(stages, dict):
        return metrics
    top = {k: v for k, v in metrics.items() if k != "stages"}
    return {**metrics, "stages": {
        name: ({k: v for k, v in top.items() if k not in stage[FINAL_STAGE]}
               if isinstance(stage, dict) and FINAL_STAGE in stage else stage)
        for name, stage in stages.items()}}


def _compress(db: sqlite3.Connection, config: dict[str, Any]) -> tuple[int | None, bytes]:
    """(dictionary id, blob) of a config: compressed against the newest dictionary, if any."""
    latest = db.execute("SELECT id, data FROM dictionaries ORDER BY id DESC LIMIT 1").fetchone()
    text = json.dumps(config, sort_keys=True).encode()
    if latest is None:
        return None, zlib.compress(text, 9)
    packer = zlib.compressobj(9, zdict=zlib.decompress(latest["data"]))
    return latest["id"], packer.compress(text) + packer.flush()


def _decompress(db: sqlite3.Connection, blob: bytes, dictionary: int | None) -> dict[str, Any]:
    if dictionary is None:
        return json.loads(zlib.decompress(blob))
    data = db.execute("SELECT data FROM dictionaries WHERE id = ?", (dictionary,)).fetchone()[0]
    unpacker = zlib.decompressobj(zdict=zlib.decompress(data))
    return json.loads(unpacker.decompress(blob) + unpacker.flush())


def compact(path: Path | None = None) -> tuple[int, int]:
    """Shrink the store: a new dictionary from the newest stored configs, every config
    compressed again against it, a recipe's last stage kept once (:func:`_pack`), unused
    dictionaries dropped, 1 KiB pages, VACUUM. Nothing a row says changes (rows and config_of
    give the same metrics and config). Returns the file's (old, new) bytes."""
    path = path or store_path()
    if not path.is_file():
        raise SystemExit(f"no results store at {path}")
    before = path.stat().st_size
    with connect(path, write=True) as db:
        stored = db.execute("SELECT id, config, config_dictionary FROM runs "
                            "WHERE config IS NOT NULL ORDER BY date DESC, id DESC").fetchall()
        configs = {r["id"]: _decompress(db, r["config"], r["config_dictionary"]) for r in stored}
        sample: list[bytes] = []
        for config in configs.values():  # newest first; zlib matches best near the end
            if sum(map(len, sample)) >= DICTIONARY_BYTES:
                break
            sample.insert(0, json.dumps(config, sort_keys=True).encode())
        if sample:
            db.execute("INSERT INTO dictionaries (data) VALUES (?)",
                       (zlib.compress(b"".join(sample)[-DICTIONARY_BYTES:], 9),))
            for row_id, config in configs.items():
                dictionary, blob = _compress(db, config)
                db.execute("UPDATE runs SET config = ?, config_dictionary = ? WHERE id = ?",
                           (blob, dictionary, row_id))
        for row_id, text in db.execute("SELECT id, metrics FROM runs").fetchall():
            packed = _pack(json.loads(text))
            if packed != text:
                db.execute("UPDATE runs SET metrics = ? WHERE id = ?", (packed, row_id))
        db.execute("DELETE FROM dictionaries WHERE id NOT IN "
                   "(SELECT config_dictionary FROM runs WHERE config_dictionary IS NOT NULL)")
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA page_size = 1024")
        db.execute("VACUUM")
    return before, path.stat().st_size


def _metrics_digest(benchmark: str, fields: dict[str, Any]) -> str:
    """A run without a noisyseg config (a timing): its identity is the benchmark, its fields
    and the moment it was taken (a timing taken again is a new measurement, not a copy)."""
    key = {k: v for k, v in fields.items() if k not in ("seconds", "note")}
    key.setdefault("date", datetime.datetime.now(datetime.UTC).isoformat())
    return hashlib.sha256(json.dumps([benchmark, key], sort_keys=True, default=str).encode()).hexdigest()


def rows(path: Path | None = None, **where: Any) -> list[dict[str, Any]]:
    """Stored rows matching ``where`` (column = value; a list or tuple: any of them), metrics
    as a dict, oldest first: the store's and its archives'."""
    clauses, args = [], []
    for column, value in where.items():
        if column not in COLUMNS:
            raise TypeError(f"rows(): unknown column {column!r}")
        values = list(value) if isinstance(value, (list, tuple, set)) else [value]
        clauses.append(f"{column} IN ({', '.join('?' * len(values))})")
        args += values
    sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(clauses) if clauses else "")
    found = []
    for file in _files(path):
        with connect(file) as db:
            found += [_row(r) for r in db.execute(sql, args)]
    return sorted(found, key=lambda r: (r["date"] or "", r["id"]))


def _row(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["metrics"] = _unpack(json.loads(out["metrics"]))
    out.pop("config", None)
    out.pop("config_dictionary", None)
    return out


def config_of(row_id: int, path: Path | None = None) -> dict[str, Any] | None:
    """The resolved config a stored run (in the store or an archive) trained with."""
    for file in _files(path):
        with connect(file) as db:
            row = db.execute("SELECT config, config_dictionary FROM runs WHERE id = ?",
                             (row_id,)).fetchone()
            if row is not None:
                return _decompress(db, row["config"], row["config_dictionary"]) if row["config"] else None
    raise KeyError(f"no run {row_id} in {path or store_path()} or its archives")


def merge(other: Path, path: Path | None = None) -> int:
    """Copy into the store the runs of ``other`` (a store written elsewhere, e.g. on a lent GPU
    machine) it does not hold (same config, commit and tree: kept once); their configs are
    compressed again against this store's dictionary. Returns how many rows were added."""
    return _copy(other, "SELECT * FROM runs ORDER BY id", (), path)


def _copy(source_path: Path, query: str, args: tuple, path: Path | None,
          keep_ids: bool = False) -> int:
    """Copy the rows ``query`` selects in ``source_path`` into the store at ``path`` (configs
    compressed again against its dictionary; with ``keep_ids``, under their ids). Returns how
    many rows were added."""
    with closing(sqlite3.connect(source_path)) as source:
        source.row_factory = sqlite3.Row
        theirs = source.execute(query, args).fetchall()
        configs = [_decompress(source, r["config"], _get(r, "config_dictionary"))
                   if r["config"] else None for r in theirs]
    added = 0
    with connect(path, write=True) as db:
        for row, config in zip(theirs, configs, strict=True):
            values = {c: _get(row, c) for c in COLUMNS}
            values["metrics"] = _pack(json.loads(values["metrics"]))
            values["config_dictionary"], values["config"] = (
                _compress(db, config) if config is not None else (None, None))
            added += _insert(db, values, row["id"] if keep_ids else None)
    return added


def archive(before: str, path: Path | None = None) -> tuple[Path, int]:
    """Move the runs dated before ``before`` (an ISO date) to a new archive file beside the
    store (compacted, never written again) and compact the store. A row keeps its id; the store's
    newest run stays, so the store never hands out an archived id again. Returns the archive's
    path and how many runs moved."""
    path = path or store_path()
    if not path.is_file():
        raise SystemExit(f"no results store at {path}")
    with connect(path) as db:
        moving = [r[0] for r in db.execute("SELECT id FROM runs WHERE date < ?", (before,))]
        newest = db.execute("SELECT max(id) FROM runs").fetchone()[0]
    if not moving:
        raise SystemExit(f"--archive-before {before}: no run in {path} is older")
    if newest in moving:
        raise SystemExit(f"--archive-before {before} would move the store's newest run (id "
                         f"{newest}); pick an earlier date so that the store keeps its newest")
    taken = archives(path)
    number = _archive_number(taken[-1]) + 1 if taken else 1
    target = path.with_name(f"{path.stem}.archive-{number}{path.suffix}")
    moved = _copy(path, "SELECT * FROM runs WHERE date < ? ORDER BY id", (before,), target,
                  keep_ids=True)
    compact(target)
    with connect(path, write=True) as db:
        db.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in moving])
    compact(path)
    return target, moved


def _get(row: sqlite3.Row, column: str) -> Any:
    return row[column] if column in row.keys() else None  # a store older than the column


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sql", help="run this query and print the rows (table runs: the store's "
                                      "own; view all_runs: with its archives')")
    parser.add_argument("--store", type=Path, default=None, help=f"default: {STORE}")
    parser.add_argument("--merge", type=Path, metavar="OTHER",
                        help="add the runs of another store file it does not hold")
    parser.add_argument("--compact", action="store_true",
                        help="shrink the file (configs against a shared dictionary, VACUUM)")
    parser.add_argument("--archive-before", metavar="DATE",
                        help="move the runs dated before DATE (e.g. 2026-12-01) to a new archive "
                             "file beside the store (keeps each committed file under 2 MiB)")
    args = parser.parse_args()
    if args.archive_before:
        target, moved = archive(args.archive_before, args.store)
        store = args.store or store_path()
        print(f"{moved} runs moved to {target} ({target.stat().st_size / 1e6:.2f} MB); "
              f"{store}: {store.stat().st_size / 1e6:.2f} MB")
        return
    if args.merge:
        if not args.merge.is_file():
            raise SystemExit(f"--merge {args.merge}: no such store file")
        print(f"{merge(args.merge, args.store)} runs added from {args.merge}")
    if args.compact:
        before, after = compact(args.store)
        print(f"{args.store or store_path()}: {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB")
    if args.merge or args.compact:
        return
    query = args.sql or ("SELECT benchmark, preset, substr(git_commit, 1, 10) AS commit_, git_tree, "
                         "count(*) AS runs, min(date) AS first, max(date) AS last FROM all_runs "
                         "GROUP BY benchmark, preset, git_commit, git_tree ORDER BY last")
    with connect(args.store) as db:
        parts = ["SELECT * FROM main.runs"]
        for i, file in enumerate(archives(args.store)):  # all_runs: the store's and its archives'
            db.execute(f"ATTACH DATABASE ? AS archive{i}", (str(file),))
            parts.append(f"SELECT * FROM archive{i}.runs")
        db.execute("CREATE TEMP VIEW all_runs AS " + " UNION ALL ".join(parts))
        cursor = db.execute(query)
        names = [d[0] for d in cursor.description]
        print("\t".join(names))
        for r in cursor:
            print("\t".join("" if v is None else str(v) for v in r))


if __name__ == "__main__":
    sys.exit(main())
