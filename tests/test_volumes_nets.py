"""Volumes (N, C, D, H, W): the 3-D U-Net and its deterministic CUDA forms, every reweighter on a
3-D step, and the orthogonal-slice pictures."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from noisyseg_backbones import unet
from noisyseg_backbones.unet import UNet, UNetBackbone

from noisyseg import Registry, RunContext, StepContext, figures
from noisyseg.determinism import determinism
from noisyseg.outputs import class_probs, per_pixel_loss, predict

# --------------------------------------------------------------------------- the 3-D U-Net


def test_the_unet_builds_a_3d_network_for_volumes_of_any_size() -> None:
    assert UNetBackbone.spatial_dims == (2, 3)
    torch.manual_seed(0)
    net = UNetBackbone(UNetBackbone.Options(base_channels=2, depth=2, dropout=0.1)).build(1, 3, dims=3)
    kinds = {type(m) for m in net.modules()}
    assert {torch.nn.Conv3d, torch.nn.BatchNorm3d, torch.nn.Dropout3d} <= kinds
    assert not kinds & {torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Dropout2d}
    x = torch.randn(2, 1, 9, 10, 11)  # not divisible by 2**depth: pooling floors, upsampling
    logits = net(x)                    # goes back to each skip's size, as in 2-D
    assert logits.shape == (2, 3, 9, 10, 11)
    per_pixel_loss(logits, torch.randint(0, 3, (2, 9, 10, 11))).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_the_2d_unet_has_no_3d_layer_and_dims_is_checked() -> None:
    net = UNetBackbone(UNetBackbone.Options(base_channels=2, depth=2)).build(1, 1)
    assert not any(isinstance(m, torch.nn.Conv3d | torch.nn.BatchNorm3d) for m in net.modules())
    assert net(torch.randn(2, 1, 12, 13)).shape == (2, 1, 12, 13)
    with pytest.raises(ValueError, match="dims must be 2"):
        UNet(1, 1, dims=1)


@pytest.mark.parametrize(("size_in", "size_out"), [((4, 4, 4), (8, 8, 8)), ((3, 5, 7), (7, 11, 15)),
                                                   ((2, 6, 3), (5, 13, 6)), ((4, 5, 6), (4, 5, 6)),
                                                   ((8, 6, 6), (5, 3, 4))])
def test_the_matrix_form_is_torchs_trilinear_interpolation(size_in: tuple[int, int, int],
                                                           size_out: tuple[int, int, int]) -> None:
    x = torch.randn(2, 3, *size_in, dtype=torch.float64, requires_grad=True)
    ours = unet._trilinear_matrices(x, size_out)
    theirs = F.interpolate(x, size=size_out, mode="trilinear", align_corners=False)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-12, rtol=0)
    g = torch.randn_like(theirs)
    assert torch.allclose(*(torch.autograd.grad(y, x, g)[0] for y in (ours, theirs)), atol=1e-12)


@pytest.mark.parametrize("size", [(4, 6, 8), (5, 7, 9), (2, 3, 2)])
def test_the_window_form_is_torchs_3d_max_pooling(size: tuple[int, int, int]) -> None:
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)  # no ties
    ours, theirs = unet._window_max3d(x), F.max_pool3d(x, 2)
    assert torch.equal(ours, theirs)
    g = torch.randn_like(theirs)
    assert torch.equal(*(torch.autograd.grad(y, x, g)[0] for y in (ours, theirs)))


def test_the_3d_unet_with_the_deterministic_forms_computes_the_same(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA-deterministic forms, forced on the CPU: same logits, same gradients (the tied
    maxima the window form treats differently are ReLU zeros, which pass no gradient)."""
    x = torch.randn(2, 1, 9, 10, 11, dtype=torch.float64)
    results = []
    for forced in (False, True):
        monkeypatch.setattr(unet, "_matrix_form", lambda _x, forced=forced: forced)
        torch.manual_seed(0)
        net = UNet(1, 2, base=2, depth=2, dims=3).double()
        logits = net(x)
        logits.square().mean().backward()
        results.append((logits.detach(), [p.grad for p in net.parameters()]))
    (a, ga), (b, gb) = results
    assert torch.allclose(a, b, atol=1e-12, rtol=0)
    assert all(torch.allclose(p, q, atol=1e-12, rtol=0) for p, q in zip(ga, gb, strict=True))


@pytest.mark.cuda
def test_cuda_3d_unet_gradients_are_bit_identical_without_a_nondeterminism_warning() -> None:
    device = torch.device("cuda")
    x = torch.randn(2, 1, 17, 20, 23, device=device)
    with determinism(True, device), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grads = []
        for _ in range(2):
            torch.manual_seed(0)
            net = UNet(1, 2, base=4, depth=3, dims=3).to(device)
            net(x).square().mean().backward()
            grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
        assert torch.equal(*grads)
        y = torch.randn(2, 3, 5, 6, 7, device=device)
        assert torch.allclose(unet.upsample_trilinear(y, (10, 12, 13)),
                              F.interpolate(y, size=(10, 12, 13), mode="trilinear"), atol=1e-6)
    assert not [w for w in caught if "deterministic" in str(w.message)]


# --------------------------------------------------------------------------- reweighters on volumes


def test_the_losses_work_on_volume_logits() -> None:
    labels = torch.randint(0, 3, (2, 4, 5, 6))
    for k in (1, 3):
        logits = torch.randn(2, k, 4, 5, 6)
        y = labels.clamp(max=1) if k == 1 else labels
        assert per_pixel_loss(logits, y).shape == (2, 4, 5, 6)
        assert class_probs(logits).shape == (2, max(k, 2), 4, 5, 6)
        assert predict(logits).shape == (2, 4, 5, 6)


def _tiny_3d_model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.BatchNorm3d(4), torch.nn.ReLU(),
        torch.nn.Conv3d(4, 1, 3, padding=1),
    )


def _volume_masks(n: int, seed: int) -> torch.Tensor:
    """(n, 8, 8, 8) binary masks: a ball each."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:8, :8, :8]
    masks = [((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 6)
             for c in rng.uniform(2.5, 5.5, (n, 3))]
    return torch.from_numpy(np.stack(masks).astype(np.int64))


def _volume_run() -> RunContext:
    return RunContext(
        build_model=_tiny_3d_model,
        make_optimizer=lambda params: torch.optim.SGD(params, lr=0.01),
        loss_fn=per_pixel_loss, device=torch.device("cpu"), num_classes=2, noise_rate=0.5,
        epochs=2, steps_per_epoch=2, seed=0, pixel_noise_rate=0.1,
        clean_labels=_volume_masks(4, seed=1), spatial_dims=3,
    )


def _volume_step(run: RunContext, model: torch.nn.Module, meta: bool) -> StepContext:
    g = torch.Generator().manual_seed(2)
    index = torch.tensor([0, 1])
    clean = run.clean_labels[index]
    labels = clean.clone()
    labels[0, 2:6, 2:6, 2:6] = 1 - labels[0, 2:6, 2:6, 2:6]  # the first volume's labels corrupted
    images = 2 * clean[:, None].float() + torch.randn(2, 1, 8, 8, 8, generator=g)
    meta_labels = run.clean_labels[2:]
    meta_images = 2 * meta_labels[:, None].float() + torch.randn(2, 1, 8, 8, 8, generator=g)
    logits = model(images)
    return StepContext(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), images=images,
        labels=labels, logits=logits, loss_map=per_pixel_loss(logits, labels), step=0, epoch=0,
        meta_images=meta_images if meta else None, meta_labels=meta_labels if meta else None,
        index=index, clean_labels=clean,
    )


CASES: list[tuple[str, dict[str, Any]]] = [
    ("none", {}),
    ("mcpm", {}), ("mcpm", {"method": "higher"}),
    ("mwnet", {}), ("mwnet", {"per": "image"}), ("mwnet", {"per": "image", "method": "higher"}),
    ("l2rw", {}), ("l2rw", {"method": "higher"}), ("l2rw", {"per": "image"}),
    ("l2rw", {"per": "image", "method": "higher"}),
    ("coteaching", {}), ("coteaching", {"rank_within": "image"}),
    ("oracle", {}), ("oracle", {"balance": True}),
    ("gce", {}),
    ("distil", {}), ("distil", {"image_weights": True}),
]


def test_every_registered_reweighter_is_tried_on_volumes(registry: Registry) -> None:
    assert set(registry.names("reweighter")) <= {name for name, _ in CASES}


@pytest.mark.parametrize(("name", "options"), CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_a_reweighter_weighs_a_volume(registry: Registry, name: str, options: dict[str, Any]) -> None:
    torch.manual_seed(0)
    reweighter = registry.build("reweighter", name, options)
    run = _volume_run()
    reweighter.setup(run)
    model = run.build_model()
    ctx = _volume_step(run, model, reweighter.needs_meta_batch)
    weights = reweighter.weigh(ctx)
    assert weights.shape == (2, 8, 8, 8)
    assert torch.isfinite(weights).all() and (weights >= 0).all()
    preview = reweighter.preview(_volume_step(run, model, reweighter.needs_meta_batch))
    assert preview is None or (preview.shape == (2, 8, 8, 8) and torch.isfinite(preview).all())
    net = getattr(reweighter, "net", None)
    if net is not None:  # the weighting net is a 3-D one
        assert not any(isinstance(m, torch.nn.Conv2d) for m in net.modules())
        assert any(isinstance(m, torch.nn.Conv3d) for m in net.modules())
    if options.get("per") == "image":  # one weight per volume
        assert torch.equal(weights, weights[:, :1, :1, :1].expand_as(weights))
    if name == "oracle" and not options:
        assert (weights[0, 2:6, 2:6, 2:6] == 0).all() and (weights[1] > 0).all()


def test_l2rw_per_volume_gradients_agree_between_higher_and_jvp(registry: Registry) -> None:
    torch.set_default_dtype(torch.float64)
    try:
        grads = []
        for method in ("higher", "jvp"):
            reweighter = registry.build("reweighter", "l2rw", {"per": "image", "method": method})
            run = _volume_run()
            reweighter.setup(run)
            torch.manual_seed(0)
            grads.append(reweighter.eps_gradient(_volume_step(run, run.build_model(), True)))
    finally:
        torch.set_default_dtype(torch.float32)
    assert grads[0].shape == grads[1].shape == (2, 1, 1, 1)
    assert torch.allclose(*grads, rtol=1e-8, atol=1e-14)


# --------------------------------------------------------------------------- pictures of volumes


def test_the_centre_of_the_foreground_or_of_the_volume() -> None:
    mask = np.zeros((6, 8, 10), dtype=np.int64)
    assert figures.foreground_centre(mask) == (3, 4, 5)
    mask[1:4, 5:7, 2] = 1
    assert figures.foreground_centre(mask) == (2, 6, 2)


def test_a_volume_row_becomes_its_three_orthogonal_slices() -> None:
    rng = np.random.default_rng(0)
    clean = np.zeros((6, 8, 10), dtype=np.int64)
    clean[1:4, 5:7, 2] = 1
    row = {"title": "train #0", "image": rng.normal(size=(2, 6, 8, 10)), "clean": clean,
           "pred": clean, "weight": None}
    axial, coronal, sagittal = figures.volume_rows(row)
    assert axial["image"].shape == (2, 8, 10) and axial["clean"].shape == (8, 10)
    assert coronal["image"].shape == (2, 6, 10) and coronal["pred"].shape == (6, 10)
    assert sagittal["image"].shape == (2, 6, 8) and sagittal["clean"].shape == (6, 8)
    assert np.array_equal(axial["image"], row["image"][:, 2]) and axial["weight"] is None
    assert np.array_equal(sagittal["clean"], clean[:, :, 2]) and sagittal["clean"].any()
    assert "axial" in axial["title"] and "sagittal" in sagittal["title"]


def test_pictures_of_volumes_are_drawn(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def mask() -> np.ndarray:
        return (rng.random((6, 8, 10)) > 0.7).astype(np.int64)

    rows = [
        {"title": "train #0 (corrupted)", "image": rng.normal(size=(1, 6, 8, 10)).astype(np.float32),
         "clean": mask(), "noisy": mask(), "pred": mask(), "weight": rng.random((6, 8, 10))},
        {"title": "test #0", "image": rng.normal(size=(3, 6, 8, 10)).astype(np.float32),
         "clean": np.zeros((6, 8, 10), dtype=np.int64), "pred": mask()},  # empty: volume centre
    ]
    path = tmp_path / "examples.png"
    figures.save_examples(path, rows, num_classes=2)
    assert path.exists() and path.stat().st_size > 0
    augmented = [{"title": "train #0", "images": [rng.normal(size=(1, 6, 8, 10))] * 3,
                  "masks": [mask()] * 3}]
    path = tmp_path / "augment.png"
    figures.save_augmented(path, augmented)
    assert path.exists() and path.stat().st_size > 0
