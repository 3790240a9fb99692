"""train.precision: bf16 runs with every meta reweighter, fp16 runs or refuses in one line,
fp32 enters no autocast, a bf16 (and fp16) run resumed is the uninterrupted run bit for bit."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import noisyseg.loop
from noisyseg import ConfigError, run
from noisyseg.precision import Precision
from noisyseg.testing import tiny_run_config

#: the meta reweighters, with both meta-gradient backends
META = {
    "mcpm": {"name": "mcpm"},
    "mcpm-higher": {"name": "mcpm", "options": {"method": "higher"}},
    "l2rw": {"name": "l2rw"},
    "l2rw-higher": {"name": "l2rw", "options": {"method": "higher"}},
    "mwnet": {"name": "mwnet"},
    "mwnet-higher": {"name": "mwnet", "options": {"method": "higher"}},
}
REWEIGHTERS = {"none": {"name": "none"}, **META}
VOLUMES = {"name": "synthetic", "options": {"dims": 3, "size": 16, "n_train": 16, "n_meta": 4,
                                            "n_test": 3, "min_radius": 2.0, "max_radius": 4.0}}


def _config(tmp_path: Path, name: str, precision: str, reweighter: dict, **extra: object) -> dict:
    return tiny_run_config(seed=3, reweighter=reweighter, noise={"rate": 0.5},
                           train={"precision": precision, **extra.pop("train", {})},  # type: ignore[dict-item]
                           output={"dir": str(tmp_path / name), "figure_images": 2}, **extra)


def _finite(metrics: dict) -> None:
    for key in ("dice", "iou", "train_label_error_final"):
        assert math.isfinite(metrics[key]), (key, metrics[key])
    assert 0.0 <= metrics["dice"] <= 1.0


# --------------------------------------------------------------------- the config and the checks
def test_an_unknown_precision_is_refused_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="train.precision") as exc:
        run(tiny_run_config(train={"precision": "fp8"}))
    for name in ("fp32", "bf16", "fp16", "fp8"):
        assert name in str(exc.value)


def test_fp32_is_the_default_and_enters_no_autocast() -> None:
    from noisyseg.config import resolve

    assert resolve(tiny_run_config()).train.precision == "fp32"
    fp32 = Precision()
    assert fp32.dtype is None and fp32.scaler is None and not fp32.mixed
    with fp32.autocast():
        assert not torch.is_autocast_enabled("cpu")
    with Precision("bf16").autocast():
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert Precision("fp16").scaler is not None and Precision("bf16").scaler is None


def test_an_fp32_run_never_calls_autocast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("an fp32 run entered torch.autocast")

    monkeypatch.setattr(torch, "autocast", refused)
    result = run(_config(tmp_path, "fp32", "fp32", {"name": "mcpm"}), progress=False)
    _finite(result.metrics)


@pytest.mark.parametrize("name", list(META))
def test_fp16_with_a_meta_reweighter_is_one_line_naming_it(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as exc:
        run(_config(tmp_path, name, "fp16", META[name]), progress=False)
    message = str(exc.value)
    assert "\n" not in message
    assert f"reweighter '{META[name]['name']}' cannot run in fp16" in message
    assert "bf16" in message
    assert not (tmp_path / name).exists()  # refused before anything is written


def test_the_scaler_state_round_trips() -> None:
    fp16 = Precision("fp16")
    state = {"scale": 128.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
             "_growth_tracker": 7}
    fp16.load_state_dict(state)
    assert fp16.state_dict() == state
    assert Precision("bf16").state_dict() is None
    Precision("bf16").load_state_dict(state)  # nothing to restore: no error


def test_bf16_meta_gradients_agree_across_backends_and_with_fp32() -> None:
    """The meta-gradient dL^/dR in bf16, by higher's double backward and by the jvp path (its
    forward-mode pass in float32), is the fp32 one to bf16's precision, on the built-in U-Net."""
    from noisyseg_backbones.unet import UNet

    from noisyseg.outputs import per_pixel_loss
    from noisyseg.reweighting.virtual_step import meta_gradient, meta_pixel_gradient

    torch.manual_seed(0)
    model = UNet(1, 1, base=4, depth=2)
    g = torch.Generator().manual_seed(1)
    x, xm = torch.randn(2, 1, 16, 16, generator=g), torch.randn(2, 1, 16, 16, generator=g)
    y, ym = (x[:, 0] > 0.3).long(), (xm[:, 0] > 0.3).long()
    grads = {}
    for name in ("fp32", "bf16"):
        precision = Precision(name)
        for backend in ("higher", "jvp"):
            with precision.autocast():
                logits = model(x)
            loss = per_pixel_loss(logits.float(), y)
            weights = torch.full_like(loss, 0.5, requires_grad=True)
            if backend == "higher":
                _, (grad,) = meta_gradient(model, loss, weights, xm, ym, [weights], per_pixel_loss,
                                           0.5, precision=precision)
            else:
                _, grad = meta_pixel_gradient(model, x, y, loss, weights.detach(), xm, ym,
                                              per_pixel_loss, 0.5, precision=precision)
            assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
            grads[name, backend] = grad

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm())

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))

    assert rel(grads["fp32", "jvp"], grads["fp32", "higher"]) < 1e-4
    # the jvp path takes its forward-mode pass in float32 (the meta step's forwards in bf16), so
    # it differs from higher's all-bf16 double backward by about bf16's precision (0.085 measured)
    assert rel(grads["bf16", "jvp"], grads["bf16", "higher"]) < 0.15
    for backend in ("higher", "jvp"):  # per pixel, bf16's 8-bit mantissa shows (0.94 measured)
        assert cos(grads["bf16", backend], grads["fp32", backend]) > 0.85


# --------------------------------------------------------------------- runs on the CPU
@pytest.mark.parametrize("name", list(REWEIGHTERS))
def test_a_bf16_run_finishes_with_finite_metrics(tmp_path: Path, name: str) -> None:
    result = run(_config(tmp_path, name, "bf16", REWEIGHTERS[name]), progress=False)
    _finite(result.metrics)
    assert all(math.isfinite(h["train_loss"]) for h in result.history)
    assert result.model.state_dict()[next(iter(result.model.state_dict()))].dtype == torch.float32


@pytest.mark.parametrize("reweighter", ["none", "coteaching", "distil"])
def test_an_fp16_run_finishes_and_keeps_its_scaler(tmp_path: Path, reweighter: str) -> None:
    options = {"num_gradual": 1} if reweighter == "coteaching" else {}
    result = run(_config(tmp_path, reweighter, "fp16", {"name": reweighter, "options": options}),
                 progress=False)
    _finite(result.metrics)
    scaler = torch.load(tmp_path / reweighter / "checkpoint.pt", weights_only=False)["scaler"]
    assert scaler["scale"] > 0 and {"scale", "_growth_tracker"} <= set(scaler)
    # the scaler was used: steps without overflow counted, or the scale moved from its start
    assert scaler["_growth_tracker"] > 0 or scaler["scale"] != 65536.0, scaler


def test_a_bf16_run_trains_under_autocast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The step's forward enters bf16 autocast (the fp32 run never does, tested above)."""
    import noisyseg.precision

    seen: list[bool] = []
    original = noisyseg.precision.Precision.autocast

    def autocast(self):  # type: ignore[no-untyped-def]
        seen.append(self.mixed)
        return original(self)

    monkeypatch.setattr(noisyseg.precision.Precision, "autocast", autocast)
    run(_config(tmp_path, "spy", "bf16", {"name": "none"}), progress=False)
    assert seen and all(seen)


def test_a_bf16_calibrated_run_selected_on_the_meta_split(tmp_path: Path) -> None:
    """Calibration and selection on the meta split predict under autocast too."""
    config = _config(tmp_path, "cal", "bf16", {"name": "none"},
                     train={"calibrate": True, "train_on_meta": False, "select_on_meta": True})
    result = run(config, progress=False)
    _finite(result.metrics)
    assert math.isfinite(result.metrics["meta_dice_calibrated"])


def test_a_bf16_volume_run_with_mcpm(tmp_path: Path) -> None:
    result = run(_config(tmp_path, "volumes", "bf16", {"name": "mcpm"}, dataset=VOLUMES),
                 progress=False)
    _finite(result.metrics)


def test_predictions_under_autocast_are_float32_probabilities() -> None:
    """The sliding window and the batch predictions cast the logits to float32 first."""
    from noisyseg.fixtures import tiny_model
    from noisyseg.step import outputs_all, predict_all
    from noisyseg.window import sliding_probs

    torch.manual_seed(0)
    net, image = tiny_model(2).eval(), torch.randn(1, 24, 24)
    with Precision("bf16").autocast():
        probs = sliding_probs(net, image, (16, 16))
        logits = outputs_all(net, image[None], torch.device("cpu"))
        labels = predict_all(net, image[None], torch.device("cpu"), window=(16, 16))
    assert probs.dtype == torch.float32 and logits.dtype == torch.float32
    assert torch.allclose(probs.sum(0), torch.ones(24, 24), atol=1e-5)
    assert labels.shape == (1, 24, 24)


# --------------------------------------------------------------------- resume, bit for bit
def _interrupted_then_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config_of) -> tuple:
    whole = run(config_of("whole"), progress=False)
    original, calls = noisyseg.loop.train_step, []

    def interrupted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 6:  # 4 steps per epoch: in epoch 2
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(noisyseg.loop, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(config_of("cut"), progress=False)
    monkeypatch.setattr(noisyseg.loop, "train_step", original)
    resumed = run(resume=tmp_path / "cut", progress=False)
    return whole, resumed


def _same(whole: object, resumed: object, tmp_path: Path) -> None:
    for key in ("dice", "iou", "hd", "train_label_error_final", "steps"):
        assert resumed.metrics[key] == whole.metrics[key], key  # type: ignore[attr-defined]
    for a, b in zip(resumed.model.state_dict().values(), whole.model.state_dict().values(),  # type: ignore[attr-defined]
                    strict=True):
        assert torch.equal(a, b)
    saved = [torch.load(tmp_path / d / "checkpoint.pt", weights_only=False)["scaler"]
             for d in ("whole", "cut")]
    assert saved[0] == saved[1]


@pytest.mark.parametrize(("precision", "reweighter"), [("bf16", "mcpm"), ("fp16", "none")])
def test_a_resumed_run_is_the_uninterrupted_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                precision: str, reweighter: str) -> None:
    def config_of(name: str) -> dict:
        return _config(tmp_path, name, precision, {"name": reweighter}, train={"epochs": 3})

    whole, resumed = _interrupted_then_resumed(tmp_path, monkeypatch, config_of)
    _same(whole, resumed, tmp_path)


# --------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["none", "mcpm", "mcpm-higher", "l2rw", "mwnet"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_cuda_run_finishes_with_finite_metrics(tmp_path: Path, name: str, precision: str) -> None:
    if precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    config = _config(tmp_path, name, precision, REWEIGHTERS[name], device="cuda")
    if precision == "fp16" and name in META:
        with pytest.raises(ConfigError, match="cannot run in fp16"):
            run(config, progress=False)
        return
    _finite(run(config, progress=False).metrics)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("precision", "reweighter"), [("bf16", "mcpm"), ("fp16", "none")])
def test_a_resumed_cuda_run_is_the_uninterrupted_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     precision: str, reweighter: str) -> None:
    def config_of(name: str) -> dict:
        return _config(tmp_path, name, precision, {"name": reweighter}, device="cuda",
                       train={"epochs": 3})

    whole, resumed = _interrupted_then_resumed(tmp_path, monkeypatch, config_of)
    _same(whole, resumed, tmp_path)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cuda_bf16_volume_run_with_mcpm(tmp_path: Path) -> None:
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    result = run(_config(tmp_path, "volumes", "bf16", {"name": "mcpm"}, dataset=VOLUMES,
                         device="cuda"), progress=False)
    _finite(result.metrics)
