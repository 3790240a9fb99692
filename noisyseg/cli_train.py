"""The commands that train: ``noisyseg run`` (one run, or every stage of a recipe) and
``noisyseg audit`` (fold runs that rank the training masks). :mod:`noisyseg.cli` adds them to the
command line; torch is imported when a command starts, not before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from noisyseg.cli_options import config_data, friendly, run_options
from noisyseg.errors import ConfigError


@click.command()
@run_options("Run directory (default: runs/<time>-<dataset>-<noise>-<reweighter>).")
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path), metavar="RUN_DIR",
              help="Continue an interrupted run from its last checkpoint, as it was configured.")
@click.option("--nproc", type=click.IntRange(min=1), metavar="N",
              help="Train with N processes on this machine (data parallel: one GPU each on "
              "CUDA); each takes batch-size / N images of every batch.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@friendly
def run(config_file: Path | None, assignments: tuple[str, ...], resume: Path | None,
        nproc: int | None, quiet: bool, debug: bool, **flags: Any) -> None:
    """Train one model and evaluate it on the clean test split.

    With no options this trains the default: a U-Net on synthetic lesion patches whose
    training masks are dilated for 40% of the images, and prints the test metrics.
    The run directory gets config.yaml, metrics.jsonl (one line per epoch), metrics.json
    (final), checkpoint.pt, examples.png and curves.png.

    A run that dies (killed, out of time, power cut) continues with --resume RUN_DIR from the
    end of its last finished epoch, and ends exactly as it would have uninterrupted.

    One run can train in several processes (torch DistributedDataParallel: gloo on the CPU,
    NCCL on GPUs): --nproc N starts them here, or launch with
    `torchrun --nproc-per-node N -m noisyseg run ...` (several machines: see torchrun).

    Component names (dataset, noise, backbone, loss, reweighter, corrector) are listed by
    `noisyseg plugins`; each component's options are set with --set or in the config file.

    --recipe NAME runs a chain of stages (e.g. train, then fine-tune on the clean meta
    images) into one run directory, a sub-directory per stage; the options given here reach
    every stage where they make sense (see `noisyseg plugins --options NAME`).

    \b
    Examples:
      noisyseg run
      noisyseg run --reweighter mcpm --noise elastic
      noisyseg run --recipe finetune_cal
      noisyseg run --noise elastic --noise-rate 0.6 --epochs 20
      noisyseg run --config my.toml --set train.lr=0.0005
      noisyseg run --reweighter mcpm --set reweighter.options.interval=5
      noisyseg run --resume runs/20261122-101500-synthetic-dilation-mcpm
      noisyseg run --reweighter mcpm --nproc 2 --batch-size 32
      noisyseg run --loss tloss --corrector clslsr
      noisyseg run --dataset mni152 --set dataset.options.dims=3   # 3-D volumes
    """
    from noisyseg.api import run as run_engine

    if resume is not None:
        given = [f"--{k.replace('_', '-')}" for k, v in flags.items() if v is not None]
        given += ["--config"] * bool(config_file) + ["--set"] * bool(assignments)
        if given:
            raise ConfigError(
                f"--resume continues a run as it was configured; drop {', '.join(given)}"
            )
        result = run_engine(resume=resume, progress=not quiet, nproc=nproc)
        _report(result.metrics, result.run_dir)
        return

    from noisyseg.config import resolve

    config = resolve(config_data(config_file, assignments, flags))
    result = run_engine(config, progress=not quiet, nproc=nproc)
    _report(result.metrics, result.run_dir)


@click.command()
@run_options("Audit directory (default: runs/<time>-<dataset>-<noise>-audit; with --from: "
              "RUN_DIR/audit).")
@click.option("--folds", type=click.IntRange(min=1), metavar="K",
              help="Train K fold runs, each predicting the training images the others train on "
                   "(default: 3; 1 with --from).")
@click.option("--from", "from_run", type=click.Path(file_okay=False, path_type=Path),
              metavar="RUN_DIR", help="Use this finished run's network instead of fold runs "
                                     "(in-sample: it has seen the masks it judges).")
@click.option("--top", type=click.IntRange(min=0), default=16, show_default=True,
              help="Images in audit.png, worst first.")
@click.option("--signal", type=click.Choice(["boundary", "dice", "confidence", "softmin"]),
              help="The image score that ranks (default: boundary; docs/audit.md says what each "
                   "measures and how well it ranked).")
@click.option("--nproc", type=click.IntRange(min=1), metavar="N",
              help="Train each fold run with N processes (as noisyseg run --nproc).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@friendly
def audit(config_file: Path | None, assignments: tuple[str, ...], folds: int | None,
          from_run: Path | None, top: int, signal: str | None, nproc: int | None, quiet: bool,
          debug: bool, **flags: Any) -> None:
    """Rank the training masks by how likely they are wrong.

    Trains K fold runs (any option of `noisyseg run` applies to them), so that every training
    image is predicted by a network that never saw its mask, scores each image by how far its
    mask lies from that prediction, and writes into the audit directory: audit.csv (one row per
    image, worst first: name, score, share of pixels flagged, suspected kind: too large, too
    small, misplaced or missing), audit.png (the worst --top images: image, given mask, suspected
    wrong pixels, suggested mask), suggested/ (a suggested mask per image, in the data set's own
    file format) and audit.json. When the run adds noise, the truth is known and the audit
    scores its ranking (image AUROC, precision at k, pixel AUPRC).

    \b
    Examples:
      noisyseg audit
      noisyseg audit --dataset folder --set dataset.options.root=/data/my_set --noise none
      noisyseg audit --from runs/20261122-101500-synthetic-dilation-none
      noisyseg audit --recipe calibrate --folds 5 --epochs 20
    """
    from noisyseg.auditor import audit as run_audit
    from noisyseg.auditor import describe

    data = config_data(config_file, assignments, flags)
    result = run_audit(data, folds=folds, from_run=from_run, top=top, signal=signal,
                       progress=not quiet, nproc=nproc)
    s, signal = result.summary, result.summary["signal"]
    click.echo(f"audit directory: {result.audit_dir}")
    if s["in_sample"]:
        click.echo(f"in sample: the network of {s['from']} has trained on the masks it judges; "
                   "fold runs (--folds K, no --from) judge them out of sample")
    for row in result.rows[:5]:
        kind = f"  {row['kind']}" if row["kind"] else ""
        click.echo(f"  #{row['rank']:<3} {row['name']:<32} {signal} {row['score']:.3f}  "
                   f"{row['wrong_share']:.1%} of pixels flagged{kind}")
    for line in describe(s):
        click.echo(line)


def _report(m: dict[str, Any], run_dir: Path) -> None:
    if not m:  # a process other than rank 0 of a torchrun launch
        return
    click.echo(f"run directory: {run_dir}")
    for name, stage in m.get("stages", {}).items():  # a recipe: each stage, then the final
        click.echo(f"stage {name}: test Dice {stage['dice']:.4f} ({stage['epochs']} epochs, "
                   f"{stage['steps']} steps, {stage['seconds']:.0f} s)")
    unit = "mm" if m.get("distance_mm") else "px"
    click.echo(
        f"test: Dice {m['dice']:.4f}  IoU {m['iou']:.4f}  HD {m['hd']:.2f} {unit}  "
        f"HD95 {m['hd95']:.2f} {unit}  ({m['epochs']} epochs, {m['seconds']:.0f} s)"
    )
    if "dice_uncalibrated" in m:  # train.calibrate
        offsets = ", ".join(f"{v:+.1f}" for k, v in m.items() if k.startswith("calibration_offset"))
        n = int(m["calibration_images"])
        click.echo(f"calibrated on {n} meta image{'s' * (n != 1)} (offset {offsets}): "
                   f"their Dice {m['meta_dice_uncalibrated']:.4f} -> {m['meta_dice_calibrated']:.4f} "
                   f"(fitted), test Dice {m['dice_uncalibrated']:.4f} without it")
    before, after = m["train_label_error_initial"], m["train_label_error_final"]
    if before != after:
        click.echo(f"training labels: {before:.2%} of pixels wrong at the start, {after:.2%} at the end")
