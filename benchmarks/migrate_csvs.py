"""Migrate the old CSV results (benchmarks/results/*.csv) into the results store, once.

The CSVs were written by the old benchmarks/accuracy.py, grid.py (grids/cpu.yaml) and
volumes.py, each row without its config. For every row this script:

1. rebuilds, as plain data, the config the old script ran for it: its preset and method
   definition of the time (:data:`OLD_ACCURACY_PRESETS` and :func:`old_accuracy_method`,
   :data:`OLD_GRID`, :data:`OLD_VOLUMES_DATASETS`, read from git history), plus the defaults of
   the code of the time where today's differ (:data:`PINS`);
2. maps the old method to today's label (:func:`accuracy_label`, :data:`GRID_LABELS`,
   :data:`VOLUMES_LABELS`); the old fine-tune methods are dropped (:data:`FINETUNE_WHY`): they
   were runs of their own whose epochs came from a formula of accuracy.py, today's fine-tunes are
   recipe stages of a step share of the previous stage's actual steps;
3. checks the match mechanically: the resolved config of today's label, as its (one-stage) recipe
   runs it, must equal the resolved old config except for what does not change training
   (:func:`differences`);
4. drops every copy of a run (the same benchmark, preset and today's config) that several rows
   give different Dice values (ambiguous); of identical copies keeps the oldest, with the metrics
   only a later copy has (dice_uncalibrated);
5. records the rest (:func:`store.record`, git_tree ``migrated-csv``, the commit and date of the
   commit that added the row, ``git blame``).

    python benchmarks/migrate_csvs.py --dry-run          # what it would do, nothing written
    NOISYSEG_RESULTS_STORE=/tmp/copy.sqlite python benchmarks/migrate_csvs.py
    python benchmarks/migrate_csvs.py --verify-old-code  # also resolve each row's old config with
                                                         # the code of its commit (git archive)

``--verify-old-code`` checks step 1: each migrated row's config resolved by the code of its
commit (every default filled in) must equal today's resolution of the rebuilt config, but for
the settings added since (:data:`NEW_SETTINGS`, each with why its default is what the old code
did). Prints, per CSV, rows read / migrated / dropped with the reasons (``--report FILE`` writes
it as Markdown).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import subprocess
import sys
import tempfile
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import protocol
import store
from protocol import Spec

from noisyseg.config import merge

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
TREE = "migrated-csv"
NOTE = ("migrated from benchmarks/results/{file}; produced on another machine and torch: today's "
        "environment does not reproduce it bit for bit (clean synthetic seed 0: 0.89824 stored, "
        "0.8968 today)")
#: added to the note of the rows run before the `deterministic` setting existed, on CUDA
NOTE_CUDA = ("; run on CUDA before the `deterministic` setting existed (dab4cb0): cuDNN's default "
             "kernels, no autotuning; today's config records deterministic = true")

# --------------------------------------------------------------------------- the old scripts
#: accuracy.py's presets, unchanged from 6c1fabb (20 epochs on the CPU) to 9eacaae: every
#: accuracy CSV was written in that span (the oldest, accuracy-paper-h100.csv, at 6776c0d)
OLD_ACCURACY_PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "datasets": {
            "synthetic": {"name": "synthetic", "options": {"size": 48, "n_train": 300, "n_meta": 40,
                                                           "n_test": 200}},
            "mni152": {"name": "mni152", "options": {"labels": "wm", "patch": 48, "stride": 40,
                                                     "slice_step": 3, "block": 2}},
        },
        "base": {"device": "cpu", "backbone": {"name": "unet", "options": {"base_channels": 8, "depth": 3}},
                 "train": {"epochs": 20, "batch_size": 16, "lr": 1e-3, "schedule": "cosine"},
                 "output": {"figure_images": 0}},
    },
    "paper": {
        "datasets": {
            "synthetic": {"name": "synthetic", "options": {"size": 64, "n_train": 1906, "n_meta": 300,
                                                           "n_test": 1385}},
            "mni152": {"name": "mni152", "options": {"labels": "wm"}},
        },
        "base": {"device": "auto", "backbone": {"name": "unet", "options": {"base_channels": 32, "depth": 4}},
                 "train": {"epochs": 50, "batch_size": 128, "lr": 1e-4, "schedule": "step",
                           "lr_decay_epochs": [20, 40]},
                 "output": {"figure_images": 0}},
    },
}
#: accuracy.py's augmentation of none_aug and relabel_aug
OLD_AUGMENT = {"hflip": 0.5, "vflip": 0.5, "rotate90": 0.5, "brightness_contrast": 0.5}
#: accuracy.py's fine-tune methods (FINETUNED): their epochs came from finetune_epochs()
OLD_FINETUNED = ("finetune", "relabel_finetune", "relabel_detect_finetune", "finetune_cal25",
                 "relabel_finetune_cal25", "confusion_finetune", "confusion_finetune_cal25")


@functools.cache
def is_ancestor(old: str, new: str) -> bool:
    """Is commit ``old`` an ancestor of (or equal to) ``new``?"""
    return subprocess.run(["git", "merge-base", "--is-ancestor", old, new], cwd=ROOT,
                          check=False).returncode == 0


#: why each old fine-tune is not migrated. Old: a run of its own from the weights of another
#: stored run (train.init_from), for finetune_epochs(): a fifth of *none's* nominal steps,
#: (n_train + n_meta) // batch per epoch, over the meta batches left after the set-aside; today
#: a fine-tune is stage 2 of a recipe, a fifth of stage 1's actual steps
FINETUNE_WHY = {
    "finetune": "not migrated (old fine-tunes are left out by decision), although on these presets "
                "its epochs equal those of today's finetune recipe (cpu: synthetic 42, mni152 40; "
                "paper synthetic 85)",
    "relabel_finetune": "its epochs came from none's steps, today's relabel_finetune takes a fifth "
                        "of relabel's own (L2RW trains without the meta images): cpu 42 / 40 "
                        "epochs then, 36 / 34 today",
    "finetune_cal25": "its epochs came from none's steps over the 30 / 32 meta images left; today's "
                      "finetune_cal takes a fifth of stage 1's steps, which trains without the "
                      "set-aside: cpu 84 / 40 epochs then, 80 / 38 today",
    "confusion_finetune_cal25": "as finetune_cal25: cpu 84 / 40 epochs then, 80 / 38 today "
                                "(confusion_finetune_cal)",
    "relabel_detect_finetune": "no recipe today chains relabel_detect and a fine-tune (and its "
                               "epochs came from none's steps)",
    "relabel_finetune_cal25": "no recipe today chains relabel, a fine-tune and a set-aside "
                              "calibration (and its epochs came from none's steps)",
    "confusion_finetune": "no recipe today chains the confusion loss and a fine-tune without "
                          "calibration (and its epochs came from none's steps)",
}


def old_accuracy_method(method: str, lr: float, commit: str) -> dict[str, Any]:
    """What ``method`` added to the preset's base in the accuracy.py of ``commit`` (9eacaae's
    method_config, whose definitions did not change from when each method was added, except
    the mcpm ones: before 626eb7c ``mcpm`` and ``mcpm_head`` set no interval_max, whose default
    then was the every-step schedule (:data:`PINS`); in 626eb7c itself ``mcpm_head`` lost its
    meta_layers = 1 (fixed in 88d2390), but no mcpm_head row was written with that code)."""
    if method.endswith("_cal25"):
        return merge(old_accuracy_method(method.removesuffix("_cal25"), lr, commit),
                     {"train": {"calibrate": True, "calibration_share": 0.25}})
    if method.endswith("_calib"):
        return merge(old_accuracy_method(method.removesuffix("_calib"), lr, commit),
                     {"train": {"train_on_meta": False, "calibrate": True}})
    relabel = {"reweighter": {"name": "l2rw"}, "corrector": {"name": "relabel"}}
    table: dict[str, dict[str, Any]] = {
        "clean": {}, "none": {},
        "none_nometa": {"train": {"train_on_meta": False}},
        "none_select": {"train": {"train_on_meta": False, "select_on_meta": True}},
        "relabel": relabel,
        "relabel_aug": {**relabel, "augment": OLD_AUGMENT},
        "none_aug": {"augment": OLD_AUGMENT},
        "relabel_detect": {**relabel, "train": {"apply_weights": False}},
        "relabel_select": {**relabel, "train": {"select_on_meta": True}},
        "oracle": {"reweighter": {"name": "oracle"}},
        "oracle_images": {"reweighter": {"name": "oracle", "options": {"per": "image"}}},
        "oracle_balanced": {"reweighter": {"name": "oracle", "options": {"balance": True}}},
        "adele": {"corrector": {"name": "adele"}},
        "gce": {"reweighter": {"name": "gce"}},
        "tloss": {"loss": {"name": "tloss"}},
        "nrdice": {"loss": {"name": "nrdice"}},
        "confusion": {"loss": {"name": "confusion"}},
        "clslsr": {"corrector": {"name": "clslsr"}},
        "relabel_tloss": {"loss": {"name": "tloss"}, **relabel},
    }
    if method in table:
        return table[method]
    if method in ("mcpm", "mcpm_head", "mcpm_adaptive", "mcpm_adaptive30"):
        options: dict[str, Any] = {"meta_lr": 10 * lr}
        if method == "mcpm_head":
            options["meta_layers"] = 1
        if method == "mcpm_adaptive":
            options["interval_max"] = 10
        if method == "mcpm_adaptive30":
            options["interval_max"] = 30
        if method in ("mcpm", "mcpm_head") and is_ancestor("626eb7c", commit):
            options["interval_max"] = None  # explicit from 626eb7c on (the default became 10)
        return {"reweighter": {"name": "mcpm", "options": options}}
    raise KeyError(method)


def old_accuracy_config(preset: str, row: dict[str, str], commit: str) -> dict[str, Any]:
    """The config accuracy.py's run_one built for ``row`` (less the fine-tunes' epochs)."""
    p = OLD_ACCURACY_PRESETS[preset]
    base = p["base"]
    config = merge(base, old_accuracy_method(row["method"], base["train"]["lr"], commit))
    return merge(config, {
        "seed": int(row["seed"]), "dataset": p["datasets"][row["dataset"]],
        "noise": {"name": "dilation", "rate": 0.0 if row["method"] == "clean" else float(row["rate"])},
        "output": {"dir": "old-run", "overwrite": True},
    })


#: grid.py's methods and grids/cpu.yaml as f4183ef wrote grid-cpu.csv
OLD_GRID = {
    "datasets": {
        "synthetic": {"name": "synthetic", "options": {"size": 48, "n_train": 300, "n_meta": 40,
                                                       "n_test": 100}},
        "mni152": {"name": "mni152", "options": {"labels": "wm", "patch": 48, "stride": 40,
                                                 "slice_step": 3, "block": 2}},
    },
    "base": {"backbone": {"name": "unet", "options": {"base_channels": 8, "depth": 3}},
             "train": {"epochs": 6, "batch_size": 16}, "output": {"figure_images": 0}},
    "methods": {
        "none": {}, "meta_only": {"train": {"meta_only": True}}, "clean": {},
        "mwnet": {"reweighter": {"name": "mwnet"}}, "l2rw": {"reweighter": {"name": "l2rw"}},
        "mcpm": {"reweighter": {"name": "mcpm"}}, "plc": {"corrector": {"name": "plc"}},
        "coteaching": {"reweighter": {"name": "coteaching"}},
        "mcpm+plc": {"reweighter": {"name": "mcpm"}, "corrector": {"name": "plc"}},
    },
    "method_options": {
        "meta_only": {"train": {"epochs": 63}},
        "plc": {"corrector": {"options": {"warmup_epochs": 2}}},
        "mcpm+plc": {"corrector": {"options": {"warmup_epochs": 2}}},
    },
}


def old_grid_config(row: dict[str, str]) -> dict[str, Any]:
    """grid.py's run_config (f4183ef) for ``row``."""
    method = row["method"]
    config = merge(OLD_GRID["base"], OLD_GRID["methods"][method])
    config = merge(config, OLD_GRID["method_options"].get(method, {}))
    return merge(config, {
        "seed": int(row["seed"]), "dataset": OLD_GRID["datasets"][row["dataset"]],
        "noise": {"name": row["noise"], "rate": float(row["rate"])},
        "output": {"dir": "old-run", "overwrite": True},
    })


#: volumes.py as cc6a141 and 7ca6c43 ran it (its default 8 epochs; the docs of 7ca6c43 say so)
OLD_VOLUMES_DATASETS = {
    "mni152": {"name": "mni152", "options": {"dims": 3, "labels": "wm"}},
    "synthetic": {"name": "synthetic", "options": {"dims": 3, "n_train": 120, "n_meta": 20,
                                                   "n_test": 40}},
}


def old_volumes_config(row: dict[str, str]) -> dict[str, Any]:
    """volumes.py's config for ``row`` (the Config it validated, before its defaults were
    dumped: the same run)."""
    config: dict[str, Any] = {
        "dataset": OLD_VOLUMES_DATASETS[row["dataset"]], "device": "cpu", "seed": int(row["seed"]),
        "noise": {"name": "dilation", "rate": 0.4, "options": {"max_radius": 3}},
        "backbone": {"name": "unet", "options": {"base_channels": 8, "depth": 3}},
        "train": {"epochs": 8, "batch_size": 8, "lr": 1e-3, "schedule": "cosine"},
        "output": {"dir": "old-run", "overwrite": True, "figure_images": 2},
    }
    if row["method"] == "clean":
        config["noise"]["rate"] = 0.0
    if row["method"] == "mcpm":
        config["reweighter"] = {"name": "mcpm"}
    return config


#: defaults of the code of the time that today's code changed: (the commit from which today's
#: default holds, the setting, its value before). Found by resolving each row's config with the
#: code of its commit (--verify-old-code) against today's resolution of the same data.
PINS: list[tuple[str, tuple[str, ...], dict[str, str], Any]] = [
    # mcpm: the adaptive interval (02c6395) defaulted to None (a meta step every step) until
    # 626eb7c made it 10; before 02c6395 there was no interval_max: every step
    ("626eb7c", ("reweighter", "options", "interval_max"), {"reweighter.name": "mcpm"}, None),
]


def with_pins(config: dict[str, Any], commit: str) -> dict[str, Any]:
    """``config`` with the defaults of ``commit``'s code where today's differ (:data:`PINS`),
    unless the config sets them itself."""
    for since, path, when, value in PINS:
        if is_ancestor(since, commit):
            continue
        if any(_get(config, tuple(k.split("."))) != v for k, v in when.items()):
            continue
        if _get(config, path) is _MISSING:
            config = merge(config, _nest(path, value))
    return config


_MISSING = object()


def _get(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return _MISSING
        data = data[key]
    return data


def _nest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    for key in reversed(path):
        value = {key: value}
    return value


# --------------------------------------------------------------------------- today's labels
RELABEL = "l2rw+relabel"
AUG = "+augment.hflip=0.5+augment.vflip=0.5+augment.rotate90=0.5+augment.brightness_contrast=0.5"
CALIB = "+train.train_on_meta=false+train.calibrate=true"


def accuracy_label(method: str, lr: float) -> str | None:
    """Today's label of an old accuracy method (None: a fine-tune, not migrated)."""
    if method in OLD_FINETUNED:
        return None
    mcpm = f"mcpm+reweighter.options.meta_lr={10 * lr:g}"
    every_step = "+reweighter.options.interval_max=null"
    return {
        "clean": "none", "none": "none",
        "none_nometa": "none+train.train_on_meta=false",
        "none_select": "none+train.train_on_meta=false+train.select_on_meta=true",
        "oracle": "oracle",
        "oracle_balanced": "oracle+reweighter.options.balance=true",
        "oracle_images": "oracle+reweighter.options.per=image",
        "adele": "adele",
        "gce": "none+reweighter.name=gce",  # 'gce' alone names a loss and a reweighter today
        "relabel": RELABEL,
        "relabel_select": RELABEL + "+train.select_on_meta=true",
        "relabel_detect": RELABEL + "+train.apply_weights=false",
        "none_aug": "none" + AUG,
        "relabel_aug": RELABEL + AUG,
        "mcpm": mcpm + every_step,
        "mcpm_head": mcpm + every_step + "+reweighter.options.meta_layers=1",
        "mcpm_adaptive": mcpm,  # interval_max = 10: today's default
        "mcpm_adaptive30": mcpm + "+reweighter.options.interval_max=30",
        "tloss": "tloss", "nrdice": "nrdice", "confusion": "confusion", "clslsr": "clslsr",
        "relabel_tloss": RELABEL + "+tloss",
        "none_calib": "none" + CALIB,
        "oracle_calib": "oracle" + CALIB,
        "relabel_calib": RELABEL + CALIB,
        "none_cal25": "calibrate",
        "relabel_cal25": "calibrate+" + RELABEL,
        "confusion_cal25": "calibrate+confusion",
    }[method]


GRID_LABELS = {
    "none": "none", "clean": "none", "meta_only": "none+train.meta_only=true+train.epochs=63",
    "mwnet": "mwnet", "l2rw": "l2rw", "coteaching": "coteaching",
    "mcpm": "mcpm+reweighter.options.interval_max=null",  # grids/cpu.yaml's mcpm is today's default
    "plc": "plc+corrector.options.warmup_epochs=2",
    "mcpm+plc": "mcpm+plc+corrector.options.warmup_epochs=2+reweighter.options.interval_max=null",
}
VOLUMES_LABELS = {"clean": "none", "none": "none", "mcpm": "mcpm"}


@functools.lru_cache(maxsize=1)
def grid_preset() -> dict[str, Any]:
    import grid

    return grid.load_grid(HERE / "grids" / "cpu.yaml").preset


def volumes_preset() -> dict[str, Any]:
    """volumes.py's preset ``volumes`` (8 epochs), as its main() builds it."""
    return {"datasets": OLD_VOLUMES_DATASETS, "base": {
        "device": "cpu", "backbone": {"name": "unet", "options": {"base_channels": 8, "depth": 3}},
        "train": {"epochs": 8, "batch_size": 8, "lr": 1e-3, "schedule": "cosine"},
        "output": {"figure_images": 2}}}


# --------------------------------------------------------------------------- the CSVs
#: file -> (benchmark, preset in the store)
CSVS = {
    "accuracy-cpu.csv": ("accuracy", "cpu"),
    "accuracy-paper-h100.csv": ("accuracy", "paper"),
    "accuracy-cpu-augment.csv": ("accuracy", "cpu"),
    "accuracy-cpu-metalayers.csv": ("accuracy", "cpu"),
    "accuracy-cpu-adaptive08.csv": ("accuracy", "cpu"),
    "accuracy-cpu-losses.csv": ("accuracy", "cpu"),
    "accuracy-cpu-calibration.csv": ("accuracy", "cpu"),
    "accuracy-cpu-default.csv": ("accuracy", "cpu"),
    "accuracy-cpu-seeds35.csv": ("accuracy", "cpu"),
    "accuracy-cpu-confusion.csv": ("accuracy", "cpu"),
    "accuracy-cpu-default120.csv": ("accuracy", "cpu"),
    "accuracy-cpu-seeds35-confusion.csv": ("accuracy", "cpu"),
    "grid-cpu.csv": ("grid", "grid-cpu"),
    "volumes-cpu.csv": ("volumes", "volumes"),
    "volumes-synthetic-cpu.csv": ("volumes", "volumes"),
}
#: CSV column -> today's metric name (metrics.json)
METRIC_NAMES = {
    "accuracy": {"dice": "dice", "best_dice": "best_dice", "auroc": "weight_auroc",
                 "auroc_region": "weight_auroc_region", "mass_corrupted": "weight_mass_corrupted",
                 "corrupted_share": "corrupted_share", "dice_uncalibrated": "dice_uncalibrated"},
    "grid": {"dice": "dice", "best_dice": "best_dice", "miou": "iou", "hd95": "hd95",
             "auroc": "weight_auroc", "label_error_initial": "train_label_error_initial",
             "label_error_final": "train_label_error_final"},
    "volumes": {"dice": "dice", "best_epoch_dice": "best_dice", "hd95_mm": "hd95"},
}


@dataclass
class Row:
    """One CSV row on its way to the store."""

    file: str
    line: int
    data: dict[str, str]
    commit: str
    date: str
    benchmark: str
    preset: str
    old_config: dict[str, Any] | None = None
    label: str | None = None
    spec: Spec | None = None
    new_config: dict[str, Any] | None = None
    drop: str | None = None      # why it is not migrated
    same_as: Row | None = None   # an identical copy kept elsewhere
    extra: dict[str, Any] = field(default_factory=dict)   # metrics from identical copies
    filled: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def metrics(self) -> dict[str, Any]:
        """The row's metrics under today's names (an empty cell left out), plus those only its
        identical copies hold (:func:`dedupe`)."""
        out = {}
        for column, name in METRIC_NAMES[self.benchmark].items():
            value = self.data.get(column, "")
            if value not in ("", None):
                out[name] = float(value)
        return {**self.extra, **out}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout


def blame(file: str) -> dict[int, str]:
    """Line number (1-based) -> full hash of the commit that added it."""
    out: dict[int, str] = {}
    for line in git("blame", "--line-porcelain", "--", f"benchmarks/results/{file}").splitlines():
        parts = line.split()
        if len(parts) >= 3 and len(parts[0]) == 40 and all(c in "0123456789abcdef" for c in parts[0]):
            out[int(parts[2])] = parts[0]
    return out


@functools.cache
def commit_date(commit: str) -> str:
    return git("show", "-s", "--format=%cI", commit).strip()


def read_rows() -> list[Row]:
    rows = []
    for file, (benchmark, preset) in CSVS.items():
        lines = blame(file)
        with open(RESULTS / file, newline="") as fh:
            for i, data in enumerate(csv.DictReader(fh), start=2):
                rows.append(Row(file, i, data, lines[i], commit_date(lines[i]), benchmark, preset))
    return rows


# --------------------------------------------------------------------------- the mapping
def build(row: Row) -> None:
    """Fill in the old config, today's label, spec and config, or why the row is dropped."""
    d = row.data
    method = d["method"]
    if row.benchmark == "accuracy":
        lr = OLD_ACCURACY_PRESETS[row.preset]["base"]["train"]["lr"]
        label = accuracy_label(method, lr)
        if label is None:
            row.drop = "old fine-tune method: " + FINETUNE_WHY[method]
            return
        row.old_config = old_accuracy_config(row.preset, d, row.commit)
        preset = protocol.PRESETS[row.preset]
        noise = "none" if method == "clean" else "dilation"
    elif row.benchmark == "grid":
        label = GRID_LABELS[method]
        row.old_config = old_grid_config(d)
        preset = grid_preset()
        noise = d["noise"]
    else:
        label = VOLUMES_LABELS[method]
        row.old_config = old_volumes_config(d)
        preset = volumes_preset()
        noise = "none" if method == "clean" else "dilation_r3"
    row.old_config = with_pins(row.old_config, row.commit)
    row.label = label
    rate = 0.0 if noise == "none" else float(d.get("rate") or 0.4)
    seed = int(d["seed"])
    row.spec = (protocol.clean_spec(d["dataset"], seed) if method == "clean"
                else Spec(d["dataset"], noise, rate, label, seed))
    row.new_config = protocol.spec_config(preset, row.spec, Path("runs") / "migrated" / row.spec.name)
    diff = differences(row.new_config, row.old_config)
    if diff:
        row.drop = "config differs from today's label " + repr(label) + ": " + "; ".join(diff)


@functools.cache
def _effective(key: str) -> str:
    return json.dumps(_effective_uncached(json.loads(key)), sort_keys=True)


def _effective_uncached(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved config stage 1 of its recipe trains with (:func:`store.resolved` of
    recipes.stage_config), without the output and recipe sections; a recipe of several stages
    is refused (no old row maps to one)."""
    from noisyseg.build import build_components, with_options
    from noisyseg.config import resolve
    from noisyseg.plugins import Registry
    from noisyseg.recipes import stage_config

    registry = Registry(store._plugin_manager())
    cfg = resolve(config)
    cfg = with_options(cfg, build_components(cfg, registry))
    recipe = registry.build("recipe", cfg.recipe.name, cfg.recipe.options)
    if len(recipe.stages) != 1:
        raise ValueError(f"recipe {cfg.recipe.name!r} has {len(recipe.stages)} stages")
    stage = stage_config(cfg, recipe, 0, None, registry, None)
    data = store.resolved(stage.model_dump(mode="json"))
    data.pop("recipe", None)
    return data


def effective(config: dict[str, Any]) -> dict[str, Any]:
    return json.loads(_effective(json.dumps(config, sort_keys=True, default=str)))


def differences(new: dict[str, Any], old: dict[str, Any]) -> list[str]:
    """What differs between the resolved config of today's label (as its recipe runs it) and the
    resolved old config, less what does not change training: the output section, the recipe
    section (its rules are applied: :func:`effective`), train.steps when null on both sides, and
    the noise of a clean run (rate 0: no image is corrupted, and no noise model is prepared,
    whatever its name: noisyseg.data.choose_corrupted, prepare_noise)."""
    a, b = effective(new), effective(old)
    for side in (a, b):
        if side["train"].get("steps") is None:
            side["train"].pop("steps", None)
        if side["noise"]["rate"] == 0:
            side["noise"] = {"rate": 0.0}
    out = []
    for path in sorted(set(_leaves(a)) | set(_leaves(b))):
        va, vb = _leaves(a).get(path, "<absent>"), _leaves(b).get(path, "<absent>")
        if va != vb:
            out.append(f"{'.'.join(path)}: today {va!r}, old {vb!r}")
    return out


def _leaves(data: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(data, dict) and data:
        out: dict[tuple[str, ...], Any] = {}
        for k, v in data.items():
            out.update(_leaves(v, (*prefix, str(k))))
        return out
    return {prefix: data}


def dedupe(rows: list[Row]) -> list[tuple[tuple, list[Row]]]:
    """Among the rows kept so far: copies of one run (benchmark, preset, today's config) with
    different Dice values are all dropped (returned, for the report); of identical copies the
    oldest is kept and the others point to it."""
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        if r.drop is None:
            groups[(r.benchmark, r.preset, store.digest(r.new_config))].append(r)
    ambiguous = []
    for key, copies in groups.items():
        if len(copies) < 2:
            continue
        dices = {float(c.data["dice"]) for c in copies}
        if len(dices) > 1:
            for c in copies:
                c.drop = "ambiguous: the same run with different Dice values in " + ", ".join(
                    f"{o.where} ({o.data['dice']})" for o in copies if o is not c)
            ambiguous.append((key, copies))
            continue
        copies.sort(key=lambda c: (c.date, c.file, c.line))
        kept = copies[0]
        own = kept.metrics()
        for c in copies[1:]:
            c.same_as = kept
            clash = {k: (own[k], v) for k, v in c.metrics().items() if k in own and own[k] != v}
            if clash:
                raise SystemExit(f"{c.where} and {kept.where}: the same Dice, other metrics "
                                 f"differ: {clash}")
            c.drop = f"identical duplicate of {kept.where} (kept)"
        # a metric the kept copy lacks (dice_uncalibrated: a column added in f913aed) is taken
        # from its identical copies when they agree
        for name in {k for c in copies[1:] for k in c.metrics()} - set(own):
            values = {c.metrics()[name] for c in copies[1:] if name in c.metrics()}
            if len(values) == 1:
                kept.extra[name] = values.pop()
                kept.filled.append(name)
    return ambiguous


def insert(row: Row, path: Path | None) -> None:
    spec = row.spec
    assert spec is not None and row.new_config is not None
    note = NOTE.format(file=row.file)
    device = "cuda" if "h100" in row.file else "cpu"
    if device == "cuda" and not is_ancestor("dab4cb0", row.commit):
        note += NOTE_CUDA
    store.record(
        benchmark=row.benchmark, preset=row.preset, dataset=spec.dataset, noise=spec.noise,
        noise_options=protocol.NOISES[spec.noise].get("options", {}), rate=spec.rate,
        method=spec.method, recipe=protocol.method_config(spec.method)["recipe"]["name"],
        seed=spec.seed, metrics=row.metrics(), config=row.new_config,
        seconds=float(row.data["seconds"]) if row.data.get("seconds") else None, device=device,
        torch_version=None, git_commit=row.commit, git_tree=TREE, date=row.date, note=note,
        path=path)


# --------------------------------------------------------------------------- old code check
OLD_RESOLVE = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
from noisyseg.config import resolve
from noisyseg.plugins import Registry, build_plugin_manager
reg = Registry(build_plugin_manager())
out = []
for data in json.load(sys.stdin):
    d = resolve(data).model_dump(mode="json")
    for key, sec in d.items():
        if isinstance(sec, dict) and set(sec) >= {"name", "options"}:
            sec["options"] = reg.build(key, sec["name"], sec["options"]).options.model_dump(mode="json")
    d.pop("output", None)
    out.append(d)
json.dump(out, sys.stdout)
"""
#: settings today's code has and the code of some rows had not, each with why its default is
#: what that code did
NEW_SETTINGS = {
    "recipe": "none: the run as configured, one stage (and ignored by the comparison)",
    "deterministic": "CUDA only (dab4cb0); the CPU is always deterministic (the CUDA rows: see "
                     "NOTE_CUDA)",
    "train.eval_every": "1: the test split scored every epoch, as before dab4cb0",
    "train.calibrate": "false: no calibration, as before 8e12e53",
    "train.calibration_share": "null (needs calibrate)",
    "train.apply_weights": "true: the loss weighted, as before be69e81",
    "train.select_on_meta": "false: the last epoch kept, as before a57ecdd",
    "train.steps": "null: the length in epochs",
    "train.exclude_fold": "null: every training image",
    "train.init_from": "null: start from scratch, as before b2abc19",
    "loss.name": "ce, the loss before the loss kind (739019d)",
    "loss.options": "ce has none",
    "augment": "every transform off: no augmentation, as before faa61a7",
    "reweighter.options.meta_layers": "null: the virtual step in every parameter, as before c0e1e2e",
    "reweighter.options.interval_max": "see PINS (mcpm); mwnet: null, every step, as before 02c6395",
    "reweighter.options.inputs": "loss: the paper's mask net input, as before the option",
    "reweighter.options.normalize_per": "batch: mean 1 over the batch, as before the option",
    "reweighter.options.per": "oracle: pixel, as before 8e12e53",
    "dataset.options.dims": "2 for 2-D data; the volume rows set dims = 3",
}


#: (commit, setting, today's value) -> the rows whose code of the time lacked that setting
NEW_SEEN: dict[tuple[str, str, str], list[Row]] = defaultdict(list)


def verify_old_code(rows: list[Row]) -> dict[str, list[Row]]:
    """Resolve every migrated row's old config (without the pins) with the code of its commit
    (a git archive of noisyseg/ and plugins/, imported ahead of the installed checkout) and
    compare it with today's resolution of the old config with the pins: a value that differs is
    a default the pins miss, a setting gone today is one today's code cannot run, a setting only
    today has must be in :data:`NEW_SETTINGS`. Returns each problem with its rows."""
    problems: dict[str, list[Row]] = defaultdict(list)
    by_commit: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        if r.old_config is not None:
            by_commit[r.commit].append(r)
    for commit, group in by_commit.items():
        with tempfile.TemporaryDirectory() as tmp:
            archive = subprocess.run(["git", "archive", commit, "noisyseg", "plugins"], cwd=ROOT,
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            bare = [unpinned(r) for r in group]
            env = {**os.environ, "PYTHONPATH": f"{tmp}:{tmp}/plugins"}
            done = subprocess.run([sys.executable, "-c", OLD_RESOLVE], input=json.dumps(bare),
                                  capture_output=True, text=True, env=env, cwd=tmp, check=True)
        for r, then in zip(group, json.loads(done.stdout), strict=True):
            a, b = _leaves(store.resolved(r.old_config)), _leaves(then)
            for path in sorted(set(a) | set(b)):
                key = ".".join(path)
                if path not in b:
                    known = [s for s in NEW_SETTINGS if key == s or key.startswith(s + ".")]
                    if not known:
                        problems[f"{commit[:7]}: {key} = {a[path]!r} is new since and not in "
                                 "NEW_SETTINGS"].append(r)
                    elif known[0] != "recipe":
                        NEW_SEEN[(commit[:7], key, json.dumps(a[path]))].append(r)
                elif path not in a:
                    problems[f"{commit[:7]}: {key} = {b[path]!r} is gone today"].append(r)
                elif a[path] != b[path]:
                    problems[f"{commit[:7]}: {key}: the code of the time resolved {b[path]!r}, "
                             f"today (with the pins) {a[path]!r}"].append(r)
    return problems


def unpinned(row: Row) -> dict[str, Any]:
    """The row's old config as the old script wrote it (before :func:`with_pins`)."""
    d = row.data
    if row.benchmark == "accuracy":
        return old_accuracy_config(row.preset, d, row.commit)
    if row.benchmark == "grid":
        return old_grid_config(d)
    return old_volumes_config(d)


# --------------------------------------------------------------------------- report
def report(rows: list[Row], ambiguous: list[tuple[tuple, list[Row]]], written: int | None,
           store_file: Path, old_code: dict[str, list[Row]] | None) -> str:
    lines = ["# Migration of benchmarks/results/*.csv into the results store", ""]
    migrated = [r for r in rows if r.drop is None]
    lines += [f"Store: `{store_file}`. Rows read: {len(rows)}; migrated: {len(migrated)}"
              + (f" (new rows in the store: {written})" if written is not None else " (dry run)")
              + f"; dropped: {len(rows) - len(migrated)}.", ""]
    lines += ["| CSV | read | migrated | dropped |", "|---|---|---|---|"]
    for file in CSVS:
        mine = [r for r in rows if r.file == file]
        kept = sum(r.drop is None for r in mine)
        lines.append(f"| {file} | {len(mine)} | {kept} | {len(mine) - kept} |")
    lines.append("")
    for file in CSVS:
        mine = [r for r in rows if r.file == file]
        commits = Counter(r.commit[:7] for r in mine)
        lines += [f"## {file}", "",
                  f"{len(mine)} rows (added by {', '.join(f'{c} ({n})' for c, n in commits.items())}); "
                  f"migrated {sum(r.drop is None for r in mine)}.", ""]
        labels = Counter((r.data["method"], r.label) for r in mine if r.drop is None)
        if labels:
            lines.append("Migrated, old method -> label: " + "; ".join(
                f"`{m}` -> `{lab}` ({n})" for (m, lab), n in labels.items()) + ".")
            lines.append("")
        reasons: dict[str, list[Row]] = defaultdict(list)
        for r in mine:
            if r.drop is not None:
                reason = r.drop
                if reason.startswith("identical duplicate"):
                    reason = "identical duplicate of a row kept elsewhere (same run, same Dice)"
                elif reason.startswith("ambiguous"):
                    reason = "ambiguous: the same run with different Dice values in other rows (listed below)"
                reasons[reason].append(r)
        for reason, rs in reasons.items():
            methods = Counter(r.data["method"] for r in rs)
            lines.append(f"- dropped {len(rs)}: {reason} — "
                         + ", ".join(f"{m} ({n})" for m, n in methods.items()))
        filled = Counter(n for r in mine for n in r.filled)
        if filled:
            lines.append("- metrics this file lacks, taken from identical copies in later files: "
                         + ", ".join(f"{n} ({k} rows)" for n, k in filled.items()))
        dups = [r for r in mine if r.same_as is not None]
        if dups:
            kept_in = Counter(r.same_as.file for r in dups if r.same_as is not None)
            lines.append("  - identical copies kept in: "
                         + ", ".join(f"{f} ({n})" for f, n in kept_in.items()))
        lines.append("")
    lines += ["## Ambiguous duplicates (every copy dropped)", ""]
    if not ambiguous:
        lines.append("None.")
    for _key, copies in ambiguous:
        c0 = copies[0]
        lines.append(f"- {c0.data['dataset']} r={float(c0.data.get('rate') or 0):g} "
                     f"{c0.data['method']} (label `{c0.label}`) seed {c0.data['seed']}: "
                     + ", ".join(f"{c.where} dice {c.data['dice']}" for c in copies))
    lines.append("")
    if old_code is not None:
        lines += ["## Old-code check", "",
                  "Every migrated row's old config resolved with the code of its commit against "
                  "today's resolution (with the pins): "
                  + ("no difference." if not old_code else f"{len(old_code)} problems:"), ""]
        lines += [f"- {p} ({len(rs)} rows, e.g. {rs[0].where})" for p, rs in old_code.items()]
        lines += ["", "Settings the code of the time did not have, at today's default (each "
                  "checked to be what that code did, NEW_SETTINGS):", ""]
        seen: dict[tuple[str, str], list[str]] = defaultdict(list)
        for (commit, key, value), rs in NEW_SEEN.items():
            seen[(key, value)].append(f"{commit} ({len(rs)})")
        lines += [f"- `{key} = {value}` at {', '.join(cs)}" for (key, value), cs in sorted(seen.items())]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="write nothing to the store")
    parser.add_argument("--verify-old-code", action="store_true",
                        help="also resolve each row's old config with the code of its commit")
    parser.add_argument("--report", type=Path, help="write the report (Markdown) here too")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    rows = read_rows()
    for r in rows:
        build(r)
    ambiguous = dedupe(rows)
    old_code = verify_old_code([r for r in rows if r.drop is None]) if args.verify_old_code else None
    path = store.store_path()
    written = None
    if not args.dry_run:
        if old_code:
            raise SystemExit("the old-code check found differences; nothing written:\n"
                             + "\n".join(list(old_code)[:50]))
        before = len(store.rows(path, git_tree=TREE))  # a benchmark may be writing beside us
        for r in rows:
            if r.drop is None:
                insert(r, path)
        written = len(store.rows(path, git_tree=TREE)) - before
    text = report(rows, ambiguous, written, path, old_code)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
