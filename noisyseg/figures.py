"""Pictures a person looks at: example predictions, training curves and augmentation draws, and
the rows of images they show."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from noisyseg.precision import FP32, Precision  # noqa: E402
from noisyseg.step import predict_all  # noqa: E402


def example_rows(model: torch.nn.Module, train_set: Any, test: Any, n: int, device: torch.device,
                 preview_weights: Callable[[torch.Tensor], np.ndarray | None],
                 precision: Precision = FP32) -> list[dict[str, Any]]:
    """Rows of :func:`save_examples`: up to (n + 1) // 2 training images (corrupted ones first)
    with clean and noisy masks, prediction and the reweighter's ``preview_weights(index)``, then
    test images up to n in all. The predictions under ``precision``'s autocast, as the run's."""
    corrupted = torch.nonzero(train_set.corrupted).flatten()[: (n + 1) // 2]
    train_idx = corrupted if len(corrupted) else torch.arange(min(len(train_set), (n + 1) // 2))
    test_idx = np.arange(min(len(test), n - len(train_idx)))
    rows = []
    with precision.autocast():
        train_pred = predict_all(model, train_set.images[train_idx], device)
    weights = preview_weights(train_idx)
    for k, i in enumerate(train_idx.tolist()):
        rows.append({
            "title": f"train #{i}" + (" (corrupted)" if bool(train_set.corrupted[i]) else ""),
            "image": train_set.images[i].numpy(), "clean": train_set.clean[i].numpy(),
            "noisy": train_set.noisy[i].numpy(), "pred": train_pred[k],
            "weight": None if weights is None else weights[k],
        })
    with precision.autocast():
        test_pred = predict_all(model, torch.from_numpy(np.asarray(test.images[test_idx])), device,
                                window=tuple(train_set.images.shape[2:]))  # as the test scores are
    for k, i in enumerate(test_idx.tolist()):
        rows.append({"title": f"test #{i}", "image": test.images[i], "clean": test.masks[i],
                     "pred": test_pred[k]})
    return rows


def augmented_rows(train_set: Any, labels_of: Callable[[torch.Tensor], torch.Tensor], augment: Any,
                   n: int, draws: int) -> list[dict[str, Any]]:
    """Rows of :func:`save_augmented`: n training images (corrupted ones first) with their
    training masks, and the augmentation's draws of the first ``draws`` steps, as training sees
    them."""
    index = torch.cat([torch.nonzero(train_set.corrupted).flatten(),
                       torch.nonzero(~train_set.corrupted).flatten()])[:n]
    labels = labels_of(index)
    rows = [{"title": f"train #{i}", "images": [train_set.images[i].numpy()], "masks": [labels[k].numpy()]}
            for k, i in enumerate(index.tolist())]
    for step in range(draws):
        out = augment(train_set.images[index], [labels], step, index)
        for k, row in enumerate(rows):
            row["images"].append(out.images[k].numpy())
            row["masks"].append(out.masks[0][k].numpy())
    return rows


#: the orthogonal views of a volume (D, H, W): each name with the axis its slices cut across
VIEWS = (("axial", 0), ("coronal", 1), ("sagittal", 2))


def foreground_centre(mask: np.ndarray) -> tuple[int, ...]:
    """The centroid of ``mask > 0``, rounded, or the array's centre when there is no foreground.

    Shape:
        mask - (H, W) or (D, H, W); returns one index per axis
    """
    points = np.argwhere(np.asarray(mask) > 0)
    if not len(points):
        return tuple(n // 2 for n in np.shape(mask))
    return tuple(int(round(c)) for c in points.mean(axis=0))


def volume_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A volume's row of :func:`save_examples` as three rows of 2-D pictures: the axial, coronal
    and sagittal slices through the centre of the clean mask's foreground (:func:`foreground_centre`).

    Shape:
        ``image`` - (C, D, H, W) and the masks and weights (D, H, W) -> (C, H, W) / (H, W) axial,
        (C, D, W) / (D, W) coronal, (C, D, H) / (D, H) sagittal
    """
    centre = foreground_centre(row["clean"])
    rows = []
    for view, axis in VIEWS:
        at = centre[axis]
        sliced = {key: None if value is None else np.take(np.asarray(value), at,
                                                          axis=axis + 1 if key == "image" else axis)
                  for key, value in row.items() if key != "title"}
        rows.append({**sliced, "title": f"{row['title']}\n{view}, {'DHW'[axis]} = {at}"})
    return rows


def _show_image(ax: Any, image: np.ndarray) -> None:
    img = image[0] if image.shape[0] == 1 else np.moveaxis(image[:3], 0, -1)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None)


def _show_mask(ax: Any, mask: np.ndarray, vmax: int) -> None:
    ax.imshow(mask, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")


def _panel(ax: Any, title: str | None = None, label: str | None = None, size: int = 8) -> None:
    """A panel of a contact sheet: no ticks; a column title (first row), a row label (first
    column)."""
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=9)
    if label is not None:
        ax.set_ylabel(label, fontsize=size)


def _save(fig: Any, path: Any) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def save_examples(
    path: Path,
    rows: list[dict[str, Any]],
    num_classes: int,
) -> None:
    """One row per example: image | clean mask | noisy mask | prediction [| weight map]; three
    rows per volume, its axial, coronal and sagittal slices (:func:`volume_rows`).

    Each row dict holds ``title``, ``image`` (C, H, W), ``clean`` (H, W), ``pred`` (H, W) and
    optionally ``noisy`` (H, W) and ``weight`` (H, W); for a volume (C, D, H, W) and (D, H, W).
    """
    if not rows:
        return
    rows = [r for row in rows for r in (volume_rows(row) if np.ndim(row["clean"]) == 3 else [row])]
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
            _panel(ax, col if i == 0 else None, row["title"] if col == "image" else None)
            if col == "image":
                _show_image(ax, row["image"])
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
                _show_mask(ax, mask, vmax)
                if key != "clean":  # outline the truth on the other masks
                    ax.contour(row["clean"] > 0, levels=[0.5], colors="lime", linewidths=0.7)
    fig.suptitle("green outline: clean mask", fontsize=8, y=0.995)
    _save(fig, path)


def save_curves(path: Path, history: list[dict[str, Any]]) -> None:
    """Training loss and test Dice / IoU per epoch."""
    if not history:
        return
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax1.plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("weighted training loss")
    for key in ("test_dice", "test_iou"):  # scored every train.eval_every epochs
        scored = [h for h in history if key in h]
        ax2.plot([h["epoch"] for h in scored], [h[key] for h in scored], marker="o",
                 label=key.removeprefix("test_"))
    if "label_error" in history[0]:
        ax2.plot(epochs, [h["label_error"] for h in history], ls="--", label="training label error")
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1)
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    _save(fig, path)


def save_augmented(path: Path, rows: list[dict[str, Any]]) -> None:
    """One row per training image: the image with its training mask outlined, then draws of the
    augmentation with the mask moved along. Each row dict holds ``title``, ``images`` (a list of
    (C, H, W), the original first) and ``masks`` (the matching (H, W) training masks). Volumes
    ((C, D, H, W) and (D, H, W)) show their axial slice through the centre of the original's
    training mask (:func:`foreground_centre`), the same slice in every draw."""
    if not rows:
        return
    rows = [_axial_row(row) if np.ndim(row["masks"][0]) == 3 else row for row in rows]
    cols = len(rows[0]["images"])
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.0 * cols, 2.0 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        for j, (image, mask) in enumerate(zip(row["images"], row["masks"], strict=True)):
            ax = axes[i, j]
            _panel(ax, ("original" if j == 0 else f"draw {j}") if i == 0 else None,
                   row["title"] if j == 0 else None)
            _show_image(ax, image)
            if mask.max() > 0:
                ax.contour(mask > 0, levels=[0.5], colors="orange", linewidths=0.7)
    fig.suptitle("orange outline: the training mask, moved with its image", fontsize=8, y=0.995)
    _save(fig, path)


def _axial_row(row: dict[str, Any]) -> dict[str, Any]:
    """A volume's row of :func:`save_augmented` as its axial slices through the original mask's
    foreground centre."""
    at = foreground_centre(row["masks"][0])[0]
    return {"title": f"{row['title']}\naxial, D = {at}",
            "images": [np.asarray(image)[:, at] for image in row["images"]],
            "masks": [np.asarray(mask)[at] for mask in row["masks"]]}


def save_audit(path: Any, rows: list[dict[str, Any]], num_classes: int) -> None:
    """The contact sheet of ``noisyseg audit``: one row per image, worst first: image | given mask |
    suspected wrong pixels over the image (red: the given mask's foreground that the prediction
    leaves out, cyan: foreground the prediction adds, yellow: another foreground class) |
    suggested mask. Each row dict holds ``title``, ``image`` (C, H, W), ``given`` and ``pred``
    (H, W), and ``clean`` (H, W, outlined in green) or None. ``path``: a file name or object."""
    columns = ["image", "given mask", "suspected wrong pixels", "suggested mask"]
    blocks = 2 if len(rows) > 6 else 1  # images side by side: a sheet, not a strip
    lines = -(-len(rows) // blocks)
    fig, axes = plt.subplots(lines, blocks * len(columns),
                             figsize=(2.0 * blocks * len(columns), 2.1 * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    vmax = max(num_classes - 1, 1)
    for n, row in enumerate(rows):
        i, first = n % lines, (n // lines) * len(columns)
        given, pred = np.asarray(row["given"]), np.asarray(row["pred"])
        for j, col in enumerate(columns):
            ax = axes[i, first + j]
            ax.axis("on")
            _panel(ax, col if i == 0 else None, row["title"] if col == "image" else None, size=7)
            if col == "image":
                _show_image(ax, row["image"])
            elif col == "suspected wrong pixels":
                _show_image(ax, row["image"])
                overlay = np.zeros((*given.shape, 4))
                overlay[(given > 0) & (pred == 0)] = (1.0, 0.1, 0.1, 0.75)
                overlay[(given == 0) & (pred > 0)] = (0.1, 0.9, 1.0, 0.75)
                overlay[(given > 0) & (pred > 0) & (given != pred)] = (1.0, 0.9, 0.1, 0.75)
                ax.imshow(overlay, interpolation="nearest")
            else:
                _show_mask(ax, given if col == "given mask" else pred, vmax)
            if row.get("clean") is not None and col != "image" and np.any(row["clean"] > 0):
                ax.contour(np.asarray(row["clean"]) > 0, levels=[0.5], colors="lime", linewidths=0.7)
    known = any(row.get("clean") is not None for row in rows)
    fig.suptitle("red: given foreground the prediction leaves out; cyan: foreground it adds"
                 + ("; green outline: clean mask" if known else ""), fontsize=8, y=0.998)
    _save(fig, path)
