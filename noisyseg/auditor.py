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
the data set itself). With p(c) the predicted probability of class c at a pixel, y the given
label and ŷ = argmax p the prediction:

* pixel score: 1 - p(y), cleanlab's pixel score turned around (high: likely wrong); a pixel is
  flagged where ŷ differs from y, and the suggested mask is ŷ;
* image scores (:data:`SIGNALS`; each is computed, ``signal`` picks the ranking):
  ``boundary`` = the number of flagged pixels over the mean outline length of the given and the
  predicted mask (Σ over foreground classes c of (|∂[y = c]| + |∂[ŷ = c]|) / 2, ∂: the pixels
  with a 4-neighbour outside the class or on the border): the area between the two outlines
  per unit of outline, i.e. how far (px) the given outline lies from the predicted one on
  average, whatever the object's size;
  ``dice`` = 1 - Dice(ŷ, y) over the foreground classes either holds (0 when neither holds any);
  ``confidence`` = the mean pixel score over the pixels that y or ŷ calls foreground;
  ``softmin`` = 1 - cleanlab's image quality, Σ p(y) e^((1 - p(y))/T) / Σ e^((1 - p(y))/T) over
  every pixel, T = 0.1 (``cleanlab.segmentation.rank.get_label_quality_scores``).
* suspected kind, from the given foreground G and the predicted foreground P: ``missing`` when
  most of what the prediction adds lies in objects the mask lacks altogether (or the mask is
  empty); ``misplaced`` when at least half of G lies outside P and half of P outside G; else
  ``too large`` when |G \\ P| >= 2 |P \\ G|, ``too small`` when |P \\ G| >= 2 |G \\ P|,
  ``misplaced`` otherwise (a class swap inside the foreground too); empty when nothing is flagged.

When the run adds noise (a noise model and a rate > 0), the truth is known: an image is wrong when
its given mask differs from the clean one anywhere, and the audit scores its own ranking: the
image AUROC of every signal, precision at k (k = the number of wrong images) and the pixel
AUPRC of the pixel score, from fixed-size histograms of the pixel scores of wrong and right pixels
(:class:`PixelCurve`: constant memory; 4096 bins).

Writes into the audit directory (each file whole or not at all; ``audit.json`` last):
``audit.csv`` (one row per training image, worst first), ``audit.png`` (the worst ``top``),
``suggested/`` (every training image's suggested mask, in the data set's own format, see
:meth:`noisyseg.Dataset.mask_writer`; PNG by default) and ``audit.json`` (settings and scores);
and ``fold-1/`` ... ``fold-K/``, the fold runs. An audit that stops keeps its finished folds:
the same command with the same ``--out`` goes on from there.
"""

from __future__ import annotations

import csv
import heapq
import io
import json
import math
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
import torch
from scipy import ndimage
from torch import nn

from noisyseg import rundir
from noisyseg.api import run
from noisyseg.build import build_components, resolve_device, with_options
from noisyseg.calibration import Calibrated
from noisyseg.components import MaskWriter, Splits
from noisyseg.config import Config, load_file, merge, resolve
from noisyseg.data import check_splits, choose_corrupted, corrupt_image, fold_of, prepare_noise
from noisyseg.datacache import load_splits
from noisyseg.errors import ConfigError, NoisysegError
from noisyseg.metrics import detection_auroc
from noisyseg.outputs import class_probs, out_channels
from noisyseg.plugins import Registry, build_plugin_manager

#: the image scores, by name: what each measures (high: the mask is likely wrong)
SIGNALS: dict[str, str] = {
    "boundary": "pixels where prediction and given mask differ, per outline pixel: how far (px) "
                "the given outline lies from the predicted one, on average",
    "dice": "1 - Dice(prediction, given mask) over the foreground classes",
    "confidence": "mean of 1 - p(given label) over the pixels either mask calls foreground",
    "softmin": "1 - cleanlab's image quality (softmin of p(given label), temperature 0.1)",
}
#: the ranking by default: the signal that ranked best on benchmarks/audit.py (docs/audit.md)
DEFAULT_SIGNAL = "boundary"
#: 4-neighbours within each image of a batch (B, H, W), none across images
_CROSS = np.array([np.zeros((3, 3)), [[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.zeros((3, 3))], dtype=bool)
#: cleanlab's softmin temperature
SOFTMIN_T = 0.1
CSV, SHEET, SUMMARY, SUGGESTED = "audit.csv", "audit.png", "audit.json", "suggested"


@dataclass
class AuditResult:
    """What :func:`audit` returns."""

    audit_dir: Path
    #: audit.csv's rows, worst first
    rows: list[dict[str, Any]] = field(repr=False)
    #: audit.json: the settings, and with known truth the detection scores
    summary: dict[str, Any]
    config: Config = field(repr=False)


# --------------------------------------------------------------------------- scores
@dataclass
class BatchScores:
    """The scores of a batch of images.

    Shape:
        signals - {name: (B,)}; pixel, pred - (B, H, W); wrong_share - (B,); kinds - B strings
    """

    signals: dict[str, np.ndarray]
    pixel: np.ndarray
    pred: np.ndarray
    wrong_share: np.ndarray
    kinds: list[str]


def _mean_counted(values: np.ndarray, counted: np.ndarray, empty: float) -> np.ndarray:
    """Mean over axis 0 of ``values`` where ``counted``; ``empty`` where nothing is."""
    n = counted.sum(0)
    total = np.where(counted, values, 0).sum(0)
    return np.where(n > 0, total / np.maximum(n, 1), empty)


def score_batch(probs: np.ndarray, given: np.ndarray) -> BatchScores:
    """Every signal of :data:`SIGNALS`, the pixel scores, the prediction and the suspected kind
    of each image (see the module's docstring).

    Shape:
        probs - (B, K, H, W) class probabilities (K >= 2); given - (B, H, W) integer labels
    """
    probs = np.asarray(probs, dtype=np.float32)
    given = np.asarray(given, dtype=np.int64)
    b, k = probs.shape[:2]
    axes = tuple(range(1, given.ndim))
    pred = probs.argmax(1)
    p_given = np.take_along_axis(probs, given[:, None], 1)[:, 0]
    pixel = 1.0 - p_given
    hard, counted = [], []
    outline = np.zeros(b)
    for c in range(1, k):
        g, q = given == c, pred == c
        gs, qs = g.sum(axes), q.sum(axes)
        hard.append(2.0 * (g & q).sum(axes) / np.maximum(gs + qs, 1))
        counted.append(gs + qs > 0)
        outline += (_outline(g).sum(axes) + _outline(q).sum(axes)) / 2
    flagged = pred != given
    region = (given > 0) | (pred > 0)
    inside = region.sum(axes)
    confidence = np.where(inside > 0, (pixel * region).sum(axes) / np.maximum(inside, 1),
                          pixel.mean(axes))
    x = p_given.reshape(b, -1).astype(np.float64)
    e = (1.0 - x) / SOFTMIN_T
    w = np.exp(e - e.max(1, keepdims=True))
    quality = (x * w).sum(1) / w.sum(1)
    signals = {
        "boundary": flagged.sum(axes) / np.maximum(outline, 1.0),
        "dice": 1.0 - _mean_counted(np.array(hard), np.array(counted), 1.0),
        "confidence": confidence.astype(np.float64),
        "softmin": 1.0 - quality,
    }
    kinds = [suspected_kind(given[i] > 0, pred[i] > 0) if flagged[i].any() else ""
             for i in range(b)]
    return BatchScores(signals, pixel, pred, flagged.mean(axes), kinds)


def _outline(masks: np.ndarray) -> np.ndarray:
    """The foreground pixels of each mask with a background 4-neighbour or on the border (as
    :mod:`noisyseg.metrics` draws boundaries).

    Shape:
        masks - (B, H, W) bool; returns the same
    """
    return masks & ~ndimage.binary_erosion(masks, structure=_CROSS, border_value=0)


def suspected_kind(given: np.ndarray, pred: np.ndarray) -> str:
    """What looks wrong with a mask whose prediction differs from it (see the module's
    docstring): too large, too small, misplaced or missing.

    Shape:
        given, pred - (H, W) bool foreground
    """
    extra, lack = int((given & ~pred).sum()), int((pred & ~given).sum())
    if lack and not given.any():
        return "missing"
    if lack > extra:
        parts, n = ndimage.label(pred)
        touching = np.unique(parts[given & pred])
        apart = int(np.isin(parts, touching, invert=True)[pred].sum()) if n else 0
        if 2 * apart >= lack:
            return "missing"
    if 2 * extra >= given.sum() and 2 * lack >= pred.sum():  # each mostly outside the other
        return "misplaced"
    if extra >= 2 * lack:
        return "too large"
    if lack >= 2 * extra:
        return "too small"
    return "misplaced"


class PixelCurve:
    """The scores of wrong and right pixels counted in fixed bins over [0, 1]: the area under the
    precision-recall curve (average precision, each bin one threshold) and under the ROC curve
    (ties count half) in constant memory, whatever the number of pixels."""

    def __init__(self, bins: int = 4096) -> None:
        self.bins = bins
        self.wrong = np.zeros(bins, dtype=np.int64)
        self.right = np.zeros(bins, dtype=np.int64)

    def add(self, scores: np.ndarray, wrong: np.ndarray) -> None:
        """Shape: scores, wrong - any shape, the same"""
        at = np.clip((np.asarray(scores, dtype=np.float64).ravel() * self.bins).astype(np.int64),
                     0, self.bins - 1)
        wrong = np.asarray(wrong, dtype=bool).ravel()
        self.wrong += np.bincount(at[wrong], minlength=self.bins)
        self.right += np.bincount(at[~wrong], minlength=self.bins)

    def auprc(self) -> float:
        pos = int(self.wrong.sum())
        if pos == 0 or not self.right.sum():
            return math.nan
        tp, fp = np.cumsum(self.wrong[::-1]), np.cumsum(self.right[::-1])
        precision = tp / np.maximum(tp + fp, 1)
        return float((precision * self.wrong[::-1]).sum() / pos)

    def auroc(self) -> float:
        pos, neg = int(self.wrong.sum()), int(self.right.sum())
        if pos == 0 or neg == 0:
            return math.nan
        above = np.cumsum(self.wrong[::-1])[::-1] - self.wrong  # wrong pixels in higher bins
        return float((self.right * (above + 0.5 * self.wrong)).sum() / (pos * neg))


def precision_at_k(scores: np.ndarray, positives: np.ndarray, k: int | None = None) -> float:
    """The share of positives among the ``k`` highest scores (default k: the number of
    positives; ties: the earlier image first); NaN when k is 0.

    Shape:
        scores, positives - (N,)
    """
    positives = np.asarray(positives, dtype=bool)
    k = int(positives.sum()) if k is None else k
    if k == 0:
        return math.nan
    top = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
    return float(positives[top].mean())


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


# --------------------------------------------------------------------------- the masks
class PNGMaskWriter(MaskWriter):
    """Masks as PNG files named by the samples' names (``train-00042.png``): a binary mask as
    0/255, K classes as the labels 0..K-1 (8-bit, 16-bit beyond 256 classes)."""

    def __init__(self, folder: Path, num_classes: int) -> None:
        self.folder, self.num_classes = folder, num_classes

    def write(self, name: str, mask: np.ndarray) -> None:
        from PIL import Image

        mask = np.asarray(mask)
        values = mask * 255 if self.num_classes == 2 else mask
        dtype = np.uint8 if self.num_classes <= 256 else np.uint16
        self.folder.mkdir(parents=True, exist_ok=True)
        safe = name.replace("/", "_").replace(":", "_").replace("\\", "_")
        Image.fromarray(values.astype(dtype)).save(self.folder / f"{safe}.png")


# --------------------------------------------------------------------------- the models
def _finished(run_dir: Path, option: str) -> Path:
    """The directory of the network a finished run ended with: the run's, or its last stage's."""
    from noisyseg.recipes import is_recipe_dir

    if not (run_dir / rundir.CONFIG).is_file():
        raise ConfigError(f"{option} {run_dir}: no run there ({run_dir / rundir.CONFIG} is missing)")
    if not (run_dir / rundir.FINAL).is_file():
        raise ConfigError(f"{option} {run_dir}: the run has not finished ({rundir.FINAL} is "
                          f"missing); finish it with noisyseg run --resume {run_dir}")
    if not is_recipe_dir(run_dir):
        return run_dir
    stages = [d for d in run_dir.iterdir() if d.is_dir() and d.name.split("-", 1)[0].isdigit()
              and (d / rundir.FINAL).is_file()]
    if not stages:
        raise ConfigError(f"{option} {run_dir}: no finished stage found")
    return max(stages, key=lambda d: int(d.name.split("-", 1)[0]))


def load_network(where: Path, registry: Registry, shape: tuple[int, int, int],
                 device: torch.device, option: str) -> nn.Module:
    """The network a finished run (``where``: its directory, or a recipe's last stage) ended
    with, its calibration offsets included, for data of ``shape`` (input channels, classes,
    spatial dimensions)."""
    cfg = resolve(load_file(where / rundir.CONFIG))
    backbone = registry.build("backbone", cfg.backbone.name, cfg.backbone.options)
    in_channels, k, dims = shape
    net = backbone.build_for(in_channels, out_channels(k), dims)
    try:
        net.load_state_dict(rundir.load_weights(where))
    except RuntimeError as exc:
        raise ConfigError(f"{option} {where}: its network does not fit this data set's images "
                          f"({str(exc).splitlines()[0]})") from None
    final = json.loads((where / rundir.FINAL).read_text())
    if "calibration_offset" in final:
        offsets = torch.tensor([0.0, float(final["calibration_offset"])])
    elif f"calibration_offset_class{k - 1}" in final:
        offsets = torch.tensor([float(final[f"calibration_offset_class{c}"]) for c in range(k)])
    else:
        return net.to(device)
    return Calibrated(net, offsets).to(device)


def _same_config(run_dir: Path, expected: Config) -> bool:
    """Does the finished run in ``run_dir`` hold the config ``expected`` (its output aside)?"""
    try:
        saved = load_file(run_dir / rundir.CONFIG)
    except NoisysegError:
        return False
    mine = expected.model_dump(mode="json")
    return {k: v for k, v in saved.items() if k != "output"} == \
        {k: v for k, v in mine.items() if k != "output"}


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


# --------------------------------------------------------------------------- the audit
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
    pm = plugin_manager or build_plugin_manager()
    registry = Registry(pm)
    start = time.perf_counter()
    asked = _asked(config, overrides)
    run_from = None
    if from_run is not None:
        run_from = Path(from_run)
        owner = _finished(run_from, "--from")
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
    else:
        cfg = resolve(asked)
        if cfg.output.dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            cfg = resolve(cfg, output__dir=f"runs/{stamp}-{cfg.dataset.name}-{cfg.noise.name}-audit")
    audit_dir = Path(cfg.output.dir)
    _check_audit_dir(audit_dir, cfg.output.overwrite)
    parts = build_components(cfg, registry)
    cfg = with_options(cfg, parts)
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
    device = resolve_device(cfg.device)
    shape = (splits.in_channels, splits.num_classes, splits.spatial_dims)
    created = not audit_dir.exists()
    (audit_dir / SUMMARY).unlink(missing_ok=True)  # an audit overwritten is unfinished until done
    models: list[nn.Module] = []
    try:
        if run_from is not None:
            models = [load_network(owner, registry, shape, device, "--from")]
            fold = np.zeros(n, dtype=np.int64)
        else:
            del splits  # each fold run loads its own: one copy of the data at a time
            models = [_fold_model(cfg, f, k, audit_dir, registry, pm, plugin_manager is not None,
                                  progress, nproc, device, shape) for f in range(k)]
            splits = load_splits(parts.dataset, cfg.seed)
            fold = fold_of(n, k, cfg.seed, splits.train.groups)
        result = _score(cfg, parts, splits, models, fold, audit_dir, top, signal, progress,
                        observe, in_sample=run_from is not None)
    except BaseException as exc:
        # a fold run that stopped keeps its last epoch (the engine leaves no empty one)
        kept = any(d.is_dir() and any(d.iterdir()) for d in audit_dir.glob("fold-*"))
        if created and not kept:
            shutil.rmtree(audit_dir, ignore_errors=True)
        if isinstance(exc, KeyboardInterrupt):
            exc.__notes__ = [f"the fold runs' finished epochs are kept in {audit_dir}; the same "
                             f"command with --out {audit_dir} goes on from there" if kept
                             else "nothing was kept"]
        raise
    rows, summary = result
    summary.update({"folds": k, "from": None if run_from is None else str(run_from),
                    "in_sample": run_from is not None, "signal": signal, "images": n,
                    "seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": peak_rss_mb(),
                    "config": cfg.model_dump(mode="json")})
    rundir.write_text(audit_dir / SUMMARY, json.dumps(_json_safe(summary), indent=2) + "\n")
    return AuditResult(audit_dir=audit_dir, rows=rows, summary=summary, config=cfg)


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


def _check_audit_dir(path: Path, overwrite: bool) -> None:
    """Refuse a finished audit (unless ``overwrite``) and a directory holding anything but what
    an unfinished audit writes."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output.dir {path} exists and is not a directory")
    if not path.is_dir() or overwrite:
        return
    if (path / SUMMARY).exists():
        raise ConfigError(f"{path} already holds a finished audit; choose another --out or pass "
                          "--overwrite")
    ours = (CSV, SHEET, SUGGESTED)
    others = [p.name for p in path.iterdir()
              if p.name not in ours and not p.name.startswith(("fold-", f".{SUGGESTED}-"))]
    if others:
        raise ConfigError(f"{path} holds files of something else ({others[0]}); choose another "
                          "--out or pass --overwrite")


def _fold_model(cfg: Config, f: int, k: int, audit_dir: Path, registry: Registry,
                pm: pluggy.PluginManager, handed: bool, progress: bool, nproc: int | None,
                device: torch.device, shape: tuple[int, int, int]) -> nn.Module:
    """The network of fold run ``f`` (trained on every training image but fold f's), from its
    directory when it finished there before with the same config, else trained (or resumed)
    now."""
    from noisyseg.recipes import is_recipe_dir

    where = audit_dir / f"fold-{f + 1}"
    fold_cfg = resolve(cfg, train__exclude_fold=(f, k),
                       output={"dir": str(where), "overwrite": True})
    expected = with_options(fold_cfg, build_components(fold_cfg, registry))
    if (where / rundir.FINAL).exists() and _same_config(where, expected):
        return load_network(_finished(where, "fold"), registry, shape, device, "fold")
    kwargs: dict[str, Any] = {"progress": progress, "nproc": nproc, "label": f"fold {f + 1}/{k}"}
    if handed and not (nproc or 1) > 1:
        kwargs["plugin_manager"] = pm
    unfinished = ((where / rundir.CHECKPOINT).exists() or is_recipe_dir(where)) \
        and not (where / rundir.FINAL).exists() and _same_config(where, expected)
    result = run(resume=where, **kwargs) if unfinished else run(fold_cfg, **kwargs)
    if result.model is None:  # a recipe resumed after its last stage had finished
        return load_network(_finished(where, "fold"), registry, shape, device, "fold")
    return result.model.to(device)


def _chunks(n: int, pixels: int) -> Iterator[slice]:
    """Pieces of range(n) small enough that a chunk's class probabilities stay small."""
    size = max(1, min(128, 2**19 // max(pixels, 1)))
    return (slice(i, min(i + size, n)) for i in range(0, n, size))


#: images per forward pass of the scoring, always this many (the last batch padded): batches of
#: changing sizes leave the C allocator's heap fragmented, and memory then grows with the set
BATCH = 32


@torch.no_grad()
def _probs(models: list[nn.Module], fold: np.ndarray, images: np.ndarray,
           device: torch.device) -> np.ndarray:
    """Each image's class probabilities from the model of its fold, in eval mode.

    Shape:
        fold - (B,); images - (B, C, H, W); returns (B, K, H, W) float32
    """
    from noisyseg.step import eval_mode

    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    out: np.ndarray | None = None
    batch = torch.zeros((BATCH, *x.shape[1:]))
    for f in np.unique(fold):
        at = np.flatnonzero(fold == f)
        with eval_mode(models[f]):
            for start in range(0, len(at), BATCH):
                part = at[start : start + BATCH]
                batch[: len(part)] = x[part]
                batch[len(part) :] = 0
                p = class_probs(models[f](batch.to(device))).cpu().numpy()
                if out is None:
                    out = np.empty((len(x), *p.shape[1:]), dtype=np.float32)
                out[part] = p[: len(part)]
    assert out is not None
    return out


def _given(splits: Splits, part: slice, noise: Any, chosen: np.ndarray, seed: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """(given, clean) masks of a chunk of the train split: the noisy masks the runs trained on."""
    clean = np.asarray(splits.train.masks[part], dtype=np.int64)
    given = clean.copy()
    for j, i in enumerate(range(part.start, part.stop)):
        if chosen[i]:
            given[j] = corrupt_image(clean[j], i, noise, seed, splits.num_classes)
    return given, clean


def _score(cfg: Config, parts: Any, splits: Splits, models: list[nn.Module], fold: np.ndarray,
           audit_dir: Path, top: int, signal: str, progress: bool,
           observe: Callable[..., None] | None, in_sample: bool
           ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score every training image a chunk at a time; write audit.csv, suggested/ and audit.png."""
    from tqdm.auto import tqdm

    device = resolve_device(cfg.device)
    train, n = splits.train, len(splits.train)
    names = train.names if train.names is not None and len(train.names) == n else \
        [f"train-{i:05d}" for i in range(n)]
    share = parts.noise.image_share(cfg.noise.rate)  # noise.rate, or the model's own share
    chosen = choose_corrupted(n, share, cfg.seed)
    known = cfg.noise.name != "none" and share > 0
    prepare_noise(parts.noise, splits, cfg.noise.rate, cfg.seed)  # as the fold runs did
    scores = {s: np.zeros(n) for s in SIGNALS}
    wrong_share = np.zeros(n, dtype=np.float32)
    true_share = np.zeros(n, dtype=np.float32)
    kinds: list[str] = [""] * n
    curve = PixelCurve()
    worst: list[tuple[float, int]] = []  # a heap of the ``top`` highest scores
    tmp = audit_dir / f".{SUGGESTED}-{uuid.uuid4().hex[:8]}"
    writer = parts.dataset.mask_writer(tmp) or PNGMaskWriter(tmp, splits.num_classes)
    pixels = int(np.prod(train.masks.shape[1:]))
    audit_dir.mkdir(parents=True, exist_ok=True)
    try:
        for part in tqdm(list(_chunks(n, pixels)), desc="audit", unit="chunk", leave=False,
                         disable=not progress):
            given, clean = _given(splits, part, parts.noise, chosen, cfg.seed)
            probs = _probs(models, fold[part], np.asarray(train.images[part]), device)
            if observe is not None:
                observe(np.arange(part.start, part.stop), probs, given, clean)
            batch = score_batch(probs, given)
            wrong = given != clean
            curve.add(batch.pixel, wrong)
            for s in SIGNALS:
                scores[s][part] = batch.signals[s]
            wrong_share[part] = batch.wrong_share
            true_share[part] = wrong.mean(axis=(1, 2))
            kinds[part] = batch.kinds
            for j, i in enumerate(range(part.start, part.stop)):
                writer.write(names[i], batch.pred[j])
                item = (float(batch.signals[signal][j]), -i)
                if len(worst) < top:
                    heapq.heappush(worst, item)
                elif top and item > worst[0]:
                    heapq.heapreplace(worst, item)
        writer.close()
        order = np.argsort(-scores[signal], kind="stable")
        positives = true_share > 0
        rows = []
        for rank, i in enumerate(order.tolist(), start=1):
            row: dict[str, Any] = {
                "rank": rank, "name": names[i], "index": i, "score": round(float(scores[signal][i]), 6),
                "wrong_share": round(float(wrong_share[i]), 6), "kind": kinds[i],
                "fold": "in-sample" if in_sample else int(fold[i]) + 1,
            }
            if known:
                row.update({"truly_wrong": bool(positives[i]),
                            "true_wrong_share": round(float(true_share[i]), 6)})
            row.update({f"score_{s}": round(float(scores[s][i]), 6) for s in SIGNALS})
            rows.append(row)
        _write_csv(audit_dir / CSV, rows)
        final = audit_dir / SUGGESTED
        if final.exists():
            shutil.rmtree(final)
        if tmp.exists():
            tmp.rename(final)
        else:
            final.mkdir()
        chosen_rows = [-i for _, i in sorted(worst, reverse=True)]
        _sheet(audit_dir / SHEET, splits, parts, chosen, cfg, models, fold, chosen_rows, names,
               scores[signal], kinds, known, device)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary: dict[str, Any] = {"wrong_images": int(positives.sum()) if known else None,
                               "truth_known": known}
    if known:
        summary.update({
            "image_auroc": detection_auroc(scores[signal], positives),
            "precision_at_k": precision_at_k(scores[signal], positives),
            "pixel_auprc": curve.auprc(), "pixel_auroc": curve.auroc(),
            "pixel_wrong_share": float(curve.wrong.sum() / max(curve.wrong.sum() + curve.right.sum(), 1)),
            "signals": {s: {"image_auroc": detection_auroc(scores[s], positives),
                            "precision_at_k": precision_at_k(scores[s], positives)} for s in SIGNALS},
        })
    return rows, summary


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["rank", "name"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    rundir.write_text(path, out.getvalue())


def _sheet(path: Path, splits: Splits, parts: Any, chosen: np.ndarray, cfg: Config,
           models: list[nn.Module], fold: np.ndarray, index: list[int], names: list[str],
           scores: np.ndarray, kinds: list[str], known: bool, device: torch.device) -> None:
    """audit.png: the images ``index`` (worst first), predicted again."""
    from noisyseg.figures import save_audit

    if not index:
        path.unlink(missing_ok=True)  # --top 0: no sheet (not an older audit's)
        return
    ix = np.array(index)
    rows = []
    for j, i in enumerate(ix.tolist()):
        given, clean = _given(splits, slice(i, i + 1), parts.noise, chosen, cfg.seed)
        probs = _probs(models, fold[i : i + 1], np.asarray(splits.train.images[i : i + 1]), device)
        pred = probs.argmax(1)[0]
        rows.append({"title": f"#{j + 1} {names[i]}\nscore {scores[i]:.3f}"
                              + (f", {kinds[i]}" if kinds[i] else ""),
                     "image": np.asarray(splits.train.images[i]), "given": given[0], "pred": pred,
                     "clean": clean[0] if known else None})
    rundir.atomic_write_bytes(path, lambda fh: save_audit(fh, rows, splits.num_classes))


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def describe(summary: dict[str, Any]) -> list[str]:
    """What the command line prints about an audit's scores."""
    if not summary.get("truth_known"):
        return []
    fmt = lambda v: "n/a" if v is None or v != v else f"{v:.3f}"  # noqa: E731
    return [f"known truth: {summary['wrong_images']} of {summary['images']} masks wrong; image "
            f"AUROC {fmt(summary['image_auroc'])}, precision at {summary['wrong_images']} "
            f"{fmt(summary['precision_at_k'])}, pixel AUPRC {fmt(summary['pixel_auprc'])}"]


