"""Pictures a person looks at after a run: example predictions and training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _show_image(ax: Any, image: np.ndarray) -> None:
    img = image[0] if image.shape[0] == 1 else np.moveaxis(image[:3], 0, -1)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None)


def save_examples(
    path: Path,
    rows: list[dict[str, Any]],
    num_classes: int,
) -> None:
    """One row per example: image | clean mask | noisy mask | prediction [| weight map].

    Each row dict holds ``title``, ``image`` (C, H, W), ``clean`` (H, W), ``pred`` (H, W) and
    optionally ``noisy`` (H, W) and ``weight`` (H, W).
    """
    if not rows:
        return
    columns = ["image", "clean mask", "noisy mask", "prediction"]
    if any(r.get("weight") is not None for r in rows):
        columns.append("weight map")
    fig, axes = plt.subplots(
        len(rows), len(columns), figsize=(2.2 * len(columns), 2.2 * len(rows)), squeeze=False
    )
    vmax = max(num_classes - 1, 1)
    for i, row in enumerate(rows):
        for j, col in enumerate(columns):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col, fontsize=9)
            if col == "image":
                _show_image(ax, row["image"])
                ax.set_ylabel(row["title"], fontsize=8)
            elif col == "weight map":
                if row.get("weight") is not None:
                    im = ax.imshow(row["weight"], cmap="viridis", vmin=0)
                    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
                else:
                    ax.axis("off")
            else:
                key = {"clean mask": "clean", "noisy mask": "noisy", "prediction": "pred"}[col]
                mask = row.get(key)
                if mask is None:
                    ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
                    continue
                ax.imshow(mask, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
                if key != "clean":  # outline the truth on the other masks
                    ax.contour(row["clean"] > 0, levels=[0.5], colors="lime", linewidths=0.7)
    fig.suptitle("green outline: clean mask", fontsize=8, y=0.995)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_curves(path: Path, history: list[dict[str, Any]]) -> None:
    """Training loss and test Dice / IoU per epoch."""
    if not history:
        return
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax1.plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("weighted training loss")
    for key in ("test_dice", "test_iou"):
        ax2.plot(epochs, [h[key] for h in history], marker="o", label=key.removeprefix("test_"))
    if "label_error" in history[0]:
        ax2.plot(epochs, [h["label_error"] for h in history], ls="--", label="training label error")
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1)
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_augmented(path: Path, rows: list[dict[str, Any]]) -> None:
    """One row per training image: the image with its training mask outlined, then draws of the
    augmentation with the mask moved along. Each row dict holds ``title``, ``images`` (a list of
    (C, H, W), the original first) and ``masks`` (the matching (H, W) training masks)."""
    if not rows:
        return
    cols = len(rows[0]["images"])
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.0 * cols, 2.0 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        for j, (image, mask) in enumerate(zip(row["images"], row["masks"], strict=True)):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            _show_image(ax, image)
            if mask.max() > 0:
                ax.contour(mask > 0, levels=[0.5], colors="orange", linewidths=0.7)
            if i == 0:
                ax.set_title("original" if j == 0 else f"draw {j}", fontsize=9)
            if j == 0:
                ax.set_ylabel(row["title"], fontsize=8)
    fig.suptitle("orange outline: the training mask, moved with its image", fontsize=8, y=0.995)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
