"""The audit's scoring pass: every training image scored, a chunk of images at a time.

Nothing of the size of the data set is kept but one row of numbers per image (:class:`Tally`):
memory does not grow with the number of images beyond the data set itself. Each chunk's suggested
masks are written as they are scored; audit.csv, suggested/ and audit.png follow the pass. When
the run adds noise (a noise model and a rate > 0), the truth is known: an image is wrong when its
given mask differs from the clean one anywhere, and the pass scores its own ranking (the image
AUROC of every signal, precision at k, k = the number of wrong images, and the pixel AUPRC).
"""

from __future__ import annotations

import heapq
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from noisyseg.audit_folds import fold_probs, given_masks
from noisyseg.audit_outputs import CSV, SHEET, SUGGESTED, PNGMaskWriter, place_suggested, sheet, write_csv
from noisyseg.audit_signals import SIGNALS, BatchScores, PixelCurve, precision_at_k, score_batch
from noisyseg.build import resolve_device
from noisyseg.components import Split, Splits
from noisyseg.config import Config
from noisyseg.data import choose_corrupted, prepare_noise
from noisyseg.metrics import detection_auroc


@dataclass
class Tally:
    """Every training image's scores so far, the pixel scores' histograms and the ``top`` worst.

    Shape:
        scores - {signal: (N,)}; wrong_share, true_share - (N,); kinds - N strings
    """

    scores: dict[str, np.ndarray]
    wrong_share: np.ndarray
    true_share: np.ndarray
    kinds: list[str]
    curve: PixelCurve
    top: int
    #: a heap of the ``top`` highest (score, -index)
    worst: list[tuple[float, int]] = field(default_factory=list)

    @classmethod
    def empty(cls, n: int, top: int) -> Tally:
        return cls(scores={s: np.zeros(n) for s in SIGNALS},
                   wrong_share=np.zeros(n, dtype=np.float32),
                   true_share=np.zeros(n, dtype=np.float32),
                   kinds=[""] * n, curve=PixelCurve(), top=top)

    def add(self, part: slice, batch: BatchScores, wrong: np.ndarray) -> None:
        """The scores of the chunk ``part``.

        Shape:
            wrong - (B, H, W) bool: where the given mask differs from the clean one
        """
        self.curve.add(batch.pixel, wrong)
        for s in SIGNALS:
            self.scores[s][part] = batch.signals[s]
        self.wrong_share[part] = batch.wrong_share
        self.true_share[part] = wrong.mean(axis=(1, 2))
        self.kinds[part] = batch.kinds

    def keep_worst(self, score: float, i: int) -> None:
        """Keep image ``i`` among the ``top`` worst if its score is high enough (ties: the
        earlier image)."""
        item = (score, -i)
        if len(self.worst) < self.top:
            heapq.heappush(self.worst, item)
        elif self.top and item > self.worst[0]:
            heapq.heapreplace(self.worst, item)

    def worst_first(self) -> list[int]:
        """The indices of the ``top`` worst images, worst first."""
        return [-i for _, i in sorted(self.worst, reverse=True)]

    def summary(self, signal: str, known: bool) -> dict[str, Any]:
        """audit.json's scores: with known truth, how well each signal ranks."""
        positives = self.true_share > 0
        summary: dict[str, Any] = {"wrong_images": int(positives.sum()) if known else None,
                                   "truth_known": known}
        if known:
            curve, scores = self.curve, self.scores
            summary.update({
                "image_auroc": detection_auroc(scores[signal], positives),
                "precision_at_k": precision_at_k(scores[signal], positives),
                "pixel_auprc": curve.auprc(), "pixel_auroc": curve.auroc(),
                "pixel_wrong_share": float(curve.wrong.sum() / max(curve.wrong.sum() + curve.right.sum(), 1)),
                "signals": {s: {"image_auroc": detection_auroc(scores[s], positives),
                                "precision_at_k": precision_at_k(scores[s], positives)} for s in SIGNALS},
            })
        return summary


def _chunks(n: int, pixels: int) -> Iterator[slice]:
    """Pieces of range(n) small enough that a chunk's class probabilities stay small."""
    size = max(1, min(128, 2**19 // max(pixels, 1)))
    return (slice(i, min(i + size, n)) for i in range(0, n, size))


def image_names(train: Split) -> list[str]:
    """The training images' names: the data set's, else ``train-00042``."""
    n = len(train)
    return train.names if train.names is not None and len(train.names) == n else \
        [f"train-{i:05d}" for i in range(n)]


def ranked_rows(tally: Tally, signal: str, names: list[str], fold: np.ndarray, in_sample: bool,
                known: bool) -> list[dict[str, Any]]:
    """audit.csv's rows: one per training image, worst (by ``signal``) first."""
    scores = tally.scores
    order = np.argsort(-scores[signal], kind="stable")
    positives = tally.true_share > 0
    rows = []
    for rank, i in enumerate(order.tolist(), start=1):
        row: dict[str, Any] = {
            "rank": rank, "name": names[i], "index": i, "score": round(float(scores[signal][i]), 6),
            "wrong_share": round(float(tally.wrong_share[i]), 6), "kind": tally.kinds[i],
            "fold": "in-sample" if in_sample else int(fold[i]) + 1,
        }
        if known:
            row.update({"truly_wrong": bool(positives[i]),
                        "true_wrong_share": round(float(tally.true_share[i]), 6)})
        row.update({f"score_{s}": round(float(scores[s][i]), 6) for s in SIGNALS})
        rows.append(row)
    return rows


def score_training_set(cfg: Config, parts: Any, splits: Splits, models: list[nn.Module],
                       fold: np.ndarray, audit_dir: Path, top: int, signal: str, progress: bool,
                       observe: Callable[..., None] | None, in_sample: bool
                       ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score every training image a chunk at a time; write audit.csv, suggested/ and audit.png.
    Returns audit.csv's rows and audit.json's scores."""
    from tqdm.auto import tqdm

    device = resolve_device(cfg.device)
    train, n = splits.train, len(splits.train)
    names = image_names(train)
    share = parts.noise.image_share(cfg.noise.rate)  # noise.rate, or the model's own share
    chosen = choose_corrupted(n, share, cfg.seed)
    known = cfg.noise.name != "none" and share > 0
    prepare_noise(parts.noise, splits, cfg.noise.rate, cfg.seed)  # as the fold runs did
    tally = Tally.empty(n, top)
    tmp = audit_dir / f".{SUGGESTED}-{uuid.uuid4().hex[:8]}"
    writer = parts.dataset.mask_writer(tmp) or PNGMaskWriter(tmp, splits.num_classes)
    pixels = int(np.prod(train.masks.shape[1:]))
    audit_dir.mkdir(parents=True, exist_ok=True)
    try:
        for part in tqdm(list(_chunks(n, pixels)), desc="audit", unit="chunk", leave=False,
                         disable=not progress):
            given, clean = given_masks(splits, part, parts.noise, chosen, cfg.seed)
            probs = fold_probs(models, fold[part], np.asarray(train.images[part]), device)
            if observe is not None:
                observe(np.arange(part.start, part.stop), probs, given, clean)
            batch = score_batch(probs, given)
            tally.add(part, batch, given != clean)
            for j, i in enumerate(range(part.start, part.stop)):
                writer.write(names[i], batch.pred[j])
                tally.keep_worst(float(batch.signals[signal][j]), i)
        writer.close()
        rows = ranked_rows(tally, signal, names, fold, in_sample, known)
        write_csv(audit_dir / CSV, rows)
        place_suggested(tmp, audit_dir / SUGGESTED)
        sheet(audit_dir / SHEET, splits, parts, chosen, cfg, models, fold, tally.worst_first(), names,
              tally.scores[signal], tally.kinds, known, device)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows, tally.summary(signal, known)
