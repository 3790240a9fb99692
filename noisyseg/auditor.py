"""Find the wrong masks: rank a data set's training masks by how likely they are wrong.

``noisyseg audit`` (:func:`audit`) trains K models, model f on every training image but those of
fold f (``train.exclude_fold``: the noise, when the config adds some, is applied before the fold
is left out, so the models learn from the very masks that are audited), and model f predicts
the images of fold f: every training image gets out-of-sample class probabilities. Any method,
recipe or setting of ``noisyseg run`` applies to the fold runs. With ``from_run`` (K = 1) a
finished run's own network predicts every image instead: in-sample, it has seen the masks it is
asked about, so it flags fewer of them (the output says so).

Each image is then scored, a chunk of images at a time, and nothing of the size of the data set
is kept but one row of numbers per image (memory does not grow with the number of images beyond
the data set itself): a pixel score, the image scores of :data:`SIGNALS` (``signal`` picks the
ranking) and a suspected kind (too large, too small, misplaced, missing). When the run adds noise
(a noise model and a rate > 0), the truth is known and the audit scores its own ranking: the
image AUROC of every signal, precision at k (k = the number of wrong images) and the pixel AUPRC.

Writes into the audit directory (each file whole or not at all; ``audit.json`` last):
``audit.csv`` (one row per training image, worst first), ``audit.png`` (the worst ``top``),
``suggested/`` (every training image's suggested mask, in the data set's own format, see
:meth:`noisyseg.Dataset.mask_writer`; PNG by default) and ``audit.json`` (settings and scores);
and ``fold-1/`` ... ``fold-K/``, the fold runs. An audit that stops keeps its finished folds:
the same command with the same ``--out`` goes on from there.

The audit's parts, each a module of its own (none imports this one):

* :mod:`noisyseg.audit_signals`: the pixel and image scores, what they measure, and the scores of
  a ranking against the truth (NumPy and SciPy only);
* :mod:`noisyseg.audit_folds`: the networks that judge: the fold runs, a finished run's network,
  their predictions, and the given masks they trained on;
* :mod:`noisyseg.audit_scoring`: the scoring pass over the training images, chunk by chunk;
* :mod:`noisyseg.audit_outputs`: the audit directory's files: audit.csv, the contact sheet
  audit.png, the suggested masks and what the command line prints.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pluggy

from noisyseg import rundir
from noisyseg.audit_folds import finished_dir, judges
from noisyseg.audit_outputs import SUMMARY, check_audit_dir, describe, json_safe
from noisyseg.audit_scoring import score_training_set
from noisyseg.audit_signals import (
    DEFAULT_SIGNAL,
    SIGNALS,
    PixelCurve,
    precision_at_k,
    score_batch,
    suspected_kind,
)
from noisyseg.build import build_components, resolve_device, with_options
from noisyseg.components import Splits
from noisyseg.config import Config, load_file, merge, resolve
from noisyseg.data import check_splits, fold_of
from noisyseg.datacache import load_splits
from noisyseg.errors import ConfigError
from noisyseg.plugins import Registry, build_plugin_manager

__all__ = ["DEFAULT_SIGNAL", "SIGNALS", "AuditResult", "PixelCurve", "audit", "describe",
           "peak_rss_mb", "precision_at_k", "score_batch", "suspected_kind"]


@dataclass
class AuditResult:
    """What :func:`audit` returns."""

    audit_dir: Path
    #: audit.csv's rows, worst first
    rows: list[dict[str, Any]] = field(repr=False)
    #: audit.json: the settings, and with known truth the detection scores
    summary: dict[str, Any]
    config: Config = field(repr=False)


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far, in MiB (None where it cannot be read): Linux's
    VmHWM (getrusage's ru_maxrss there also counts the parent a subprocess was forked from)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def audit(
    config: Config | dict[str, Any] | str | Path | None = None,
    *,
    folds: int | None = None,
    from_run: str | Path | None = None,
    top: int = 16,
    signal: str | None = None,
    plugin_manager: pluggy.PluginManager | None = None,
    progress: bool = True,
    nproc: int | None = None,
    observe: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
    **overrides: Any,
) -> AuditResult:
    """Rank the training masks by how likely they are wrong (see the module's docstring).

    Args:
        config: as :func:`noisyseg.run` takes it; its ``output.dir`` is the audit's directory
            (default ``runs/<time>-<dataset>-<noise>-audit``, or ``RUN_DIR/audit`` with
            ``from_run``).
        folds: K, the number of fold runs (default 3); 1 with ``from_run``.
        from_run: a finished run (or recipe) whose network predicts every training image, in
            sample, instead of fold runs; its config gives the data, unless ``config`` says the
            same.
        top: the number of images in audit.png.
        signal: the image score that ranks (:data:`SIGNALS`; default :data:`DEFAULT_SIGNAL`).
        plugin_manager, progress, nproc: as for :func:`noisyseg.run`.
        observe: called with each chunk's training indices (B,), class probabilities
            (B, K, H, W), given masks (B, H, W) and clean masks (B, H, W) (the same as the given
            ones without noise), e.g. to hand the same out-of-sample probabilities to another tool.
        **overrides: config fields with ``__`` for nesting, e.g. ``train__epochs=3``.
    """
    signal, k = _checked_arguments(signal, top, folds, from_run)
    pm = plugin_manager or build_plugin_manager()
    registry = Registry(pm)
    start = time.perf_counter()
    cfg, owner, parts = _prepare(_asked(config, overrides), from_run, registry)
    audit_dir = Path(cfg.output.dir)
    n, shape, splits = _checked_data(parts, cfg, k, keep=from_run is not None)
    device = resolve_device(cfg.device)
    created = not audit_dir.exists()
    (audit_dir / SUMMARY).unlink(missing_ok=True)  # an audit overwritten is unfinished until done
    try:
        models = judges(owner, cfg, k, audit_dir, registry, pm, plugin_manager is not None,
                        progress, nproc, device, shape)
        if splits is None:  # each fold run loaded its own: one copy of the data at a time
            splits = load_splits(parts.dataset, cfg.seed)
        fold = np.zeros(n, dtype=np.int64) if from_run is not None else \
            fold_of(n, k, cfg.seed, splits.train.groups)
        rows, summary = score_training_set(cfg, parts, splits, models, fold, audit_dir, top, signal,
                                           progress, observe, in_sample=from_run is not None)
    except BaseException as exc:
        _clean_up_after(exc, audit_dir, created)
        raise
    summary.update({"folds": k, "from": None if from_run is None else str(Path(from_run)),
                    "in_sample": from_run is not None, "signal": signal, "images": n,
                    "seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": peak_rss_mb(),
                    "config": cfg.model_dump(mode="json")})
    rundir.write_text(audit_dir / SUMMARY, json.dumps(json_safe(summary), indent=2) + "\n")
    return AuditResult(audit_dir=audit_dir, rows=rows, summary=summary, config=cfg)


def _checked_arguments(signal: str | None, top: int, folds: int | None,
                       from_run: str | Path | None) -> tuple[str, int]:
    """(the signal that ranks, K) of :func:`audit`'s arguments, or the error that says which to
    change."""
    signal = signal or DEFAULT_SIGNAL
    if signal not in SIGNALS:
        raise ConfigError(f"unknown signal '{signal}'; choose one of: {', '.join(SIGNALS)}")
    if top < 0:
        raise ConfigError(f"--top {top}: give 0 or more images")
    if from_run is not None and folds not in (None, 1):
        raise ConfigError(f"--folds {folds} with --from: a finished run predicts every image "
                          "itself (one fold, in sample); drop --from to train K fold runs")
    k = (1 if from_run is not None else 3) if folds is None else folds
    if k < 1 or (k == 1 and from_run is None):
        raise ConfigError(f"--folds {k}: give 2 or more (out-of-sample predictions), or 1 with "
                          "--from RUN_DIR (a finished run's own, in-sample predictions)")
    return signal, k


def _prepare(asked: dict[str, Any], from_run: str | Path | None, registry: Registry
             ) -> tuple[Config, Path | None, Any]:
    """(the audit's config, the directory of the finished run's network or None, its
    components), the audit directory checked."""
    if from_run is not None:
        cfg, owner = _from_run_config(Path(from_run), asked)
    else:
        cfg, owner = resolve(asked), None
        if cfg.output.dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            cfg = resolve(cfg, output__dir=f"runs/{stamp}-{cfg.dataset.name}-{cfg.noise.name}-audit")
    check_audit_dir(Path(cfg.output.dir), cfg.output.overwrite)
    parts = build_components(cfg, registry)
    return with_options(cfg, parts), owner, parts


def _from_run_config(run_from: Path, asked: dict[str, Any]) -> tuple[Config, Path]:
    """The config of an audit by the finished run ``run_from`` (its data; ``asked`` may repeat
    it, not change it), and the directory of the network the run ended with."""
    owner = finished_dir(run_from, "--from")
    theirs = load_file(run_from / rundir.CONFIG)
    data = merge(theirs, asked)
    differ = [key for key, value in _leaves(data).items()
              if key.split(".")[0] in ("dataset", "noise", "seed")
              and _leaves(theirs).get(key, value) != value]
    if differ:
        key = differ[0]
        raise ConfigError(
            f"--from {run_from}: that run trained on other data than this audit asks for "
            f"({key}: {_leaves(theirs)[key]!r} in {run_from / rundir.CONFIG}, "
            f"{_leaves(data)[key]!r} here); drop the option, or leave --from out to train folds")
    out = _leaves(asked).get("output.dir") or run_from / "audit"
    cfg = resolve(merge(data, {"output": {"dir": str(out),
                                          "overwrite": bool(_leaves(asked).get("output.overwrite"))}}))
    return cfg, owner


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _asked(config: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """The settings the caller gave (not the defaults), as plain data."""
    if isinstance(config, Config):
        data = config.model_dump(mode="json", exclude_unset=True)
    elif isinstance(config, dict):
        data = dict(config)
    elif config is not None:
        data = load_file(config)
    else:
        data = {}
    for key, value in overrides.items():
        nested: Any = value
        for part in reversed(key.split("__")):
            nested = {part: nested}
        data = merge(data, nested)
    return data


def _checked_data(parts: Any, cfg: Config, k: int, keep: bool
                  ) -> tuple[int, tuple[int, int, int], Splits | None]:
    """(the number of training images, (input channels, classes, spatial dimensions), the splits
    when ``keep``, else None: fold runs load their own) of data the audit can rank in K folds."""
    splits = load_splits(parts.dataset, cfg.seed)
    check_splits(splits, cfg.dataset.name)
    if splits.spatial_dims != 2:
        raise ConfigError(f"dataset '{cfg.dataset.name}' gives 3-D volumes; the audit ranks 2-D "
                          "images (a folder of NIfTI volumes: dataset.options.dims=2 audits their "
                          "slices)")
    n = len(splits.train)
    groups = splits.train.groups
    n_groups = n if groups is None else len(np.unique(groups))
    if k > n_groups:
        what = "training images" if groups is None else "groups of training images (a file's slices)"
        raise ConfigError(f"--folds {k}: dataset '{cfg.dataset.name}' has {n_groups} {what}; "
                          f"give --folds {max(2, min(n_groups, 3))} or fewer" if n_groups >= 2 else
                          f"--folds {k}: dataset '{cfg.dataset.name}' has {n_groups} {what}, too few "
                          "to predict out of sample")
    shape = (splits.in_channels, splits.num_classes, splits.spatial_dims)
    return n, shape, splits if keep else None


def _clean_up_after(exc: BaseException, audit_dir: Path, created: bool) -> None:
    """After an audit stopped: remove the directory it created unless a fold run kept epochs
    there (the engine leaves no empty one), and on an interrupt say what was kept."""
    kept = any(d.is_dir() and any(d.iterdir()) for d in audit_dir.glob("fold-*"))
    if created and not kept:
        shutil.rmtree(audit_dir, ignore_errors=True)
    if isinstance(exc, KeyboardInterrupt):
        exc.__notes__ = [f"the fold runs' finished epochs are kept in {audit_dir}; the same "
                         f"command with --out {audit_dir} goes on from there" if kept
                         else "nothing was kept"]
