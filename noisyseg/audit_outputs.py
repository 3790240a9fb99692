"""What an audit writes into its directory, each file whole or not at all (``audit.json`` last).

``audit.csv`` (one row per training image, worst first), ``audit.png`` (the contact sheet of the
worst ``top``), ``suggested/`` (every training image's suggested mask, in the data set's own
format, see :meth:`noisyseg.Dataset.mask_writer`; :class:`PNGMaskWriter` by default) and
``audit.json`` (settings and scores); beside them ``fold-1/`` ... ``fold-K/``, the fold runs.
"""

from __future__ import annotations

import csv
import io
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from noisyseg import rundir
from noisyseg.audit_folds import fold_probs, given_masks
from noisyseg.components import MaskWriter, Splits
from noisyseg.config import Config
from noisyseg.errors import ConfigError

CSV, SHEET, SUMMARY, SUGGESTED = "audit.csv", "audit.png", "audit.json", "suggested"


def check_audit_dir(path: Path, overwrite: bool) -> None:
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


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """audit.csv: ``rows``, one per training image, worst first."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["rank", "name"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    rundir.write_text(path, out.getvalue())


def place_suggested(tmp: Path, final: Path) -> None:
    """Put the suggested masks written into ``tmp`` at ``final`` (an older audit's replaced; an
    empty folder when none was written)."""
    if final.exists():
        shutil.rmtree(final)
    if tmp.exists():
        tmp.rename(final)
    else:
        final.mkdir()


def sheet(path: Path, splits: Splits, parts: Any, chosen: np.ndarray, cfg: Config,
          models: list[nn.Module], fold: np.ndarray, index: list[int], names: list[str],
          scores: np.ndarray, kinds: list[str], known: bool, device: torch.device) -> None:
    """audit.png, the contact sheet: the images ``index`` (worst first), predicted again."""
    from noisyseg.figures import save_audit

    if not index:
        path.unlink(missing_ok=True)  # --top 0: no sheet (not an older audit's)
        return
    ix = np.array(index)
    rows = []
    for j, i in enumerate(ix.tolist()):
        given, clean = given_masks(splits, slice(i, i + 1), parts.noise, chosen, cfg.seed)
        probs = fold_probs(models, fold[i : i + 1], np.asarray(splits.train.images[i : i + 1]), device)
        pred = probs.argmax(1)[0]
        rows.append({"title": f"#{j + 1} {names[i]}\nscore {scores[i]:.3f}"
                              + (f", {kinds[i]}" if kinds[i] else ""),
                     "image": np.asarray(splits.train.images[i]), "given": given[0], "pred": pred,
                     "clean": clean[0] if known else None})
    rundir.atomic_write_bytes(path, lambda fh: save_audit(fh, rows, splits.num_classes))


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float of its dicts as None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
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
