"""The ``noisyseg`` command line (click).

Every error noisyseg raises on purpose is printed as one line on stderr, with exit code 2 for
bad input (click's convention) and 1 for a failure during training (a NaN loss); ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from noisyseg.errors import ConfigError, NoisysegError
from noisyseg.kinds import KINDS

KIND_TITLES = {key: kind.title for key, kind in KINDS.items()}


def _kind_flags(func: Callable[..., Any]) -> Callable[..., Any]:
    """One flag per kind of component (--dataset, --noise, ... --corrector): its name."""
    for kind in reversed(KINDS.values()):
        func = click.option(f"--{kind.key}", metavar="NAME",
                            help=f"The {kind.label}, by name (default: {kind.default}).")(func)
    return func


def _friendly(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn NoisysegError into one readable line and its exit code (unless --debug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug", False)
        try:
            return func(*args, **kwargs)
        except NoisysegError as exc:
            if debug:
                raise
            if _is_main_process():
                click.echo(f"Error: {exc}", err=True)
            else:  # under torchrun every process fails alike: rank 0 says it, the others let
                time.sleep(1)  # it finish before torchrun stops everything on their exit
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:  # Ctrl-C: say what is kept and how to go on
            if debug:
                raise
            if _is_main_process():
                notes = getattr(exc, "__notes__", None)
                click.echo("Interrupted" + (": " + "; ".join(notes) if notes else "."), err=True)
            sys.exit(130)

    return wrapper


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _format_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> str:
    return f"Warning: {message}\n"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="noisyseg")
def cli() -> None:
    """Train segmentation networks when the pixel labels are wrong.

    Pick a dataset, a label-noise model, a backbone, a reweighting strategy and a label
    corrector by name; `noisyseg plugins` lists what is installed.
    """
    warnings.formatwarning = _format_warning
    # raised inside a dependency (timm) on import; nothing a user can act on
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


def _run_options(out_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options that configure a run (--config, the component flags, --epochs ... --set), for
    every command that trains; ``out_help`` says what --out names."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed((
            click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                         help="TOML, YAML or JSON file; flags given here override it."),
            _kind_flags,
            click.option("--noise-rate", type=float,
                         help="Fraction r of training images corrupted, in [0, 1] (default: 0.4)."),
            click.option("--epochs", type=int, help="Training epochs (default: 10)."),
            click.option("--max-steps", type=int, help="Stop after this many optimiser steps in all."),
            click.option("--batch-size", type=int, help="Images per step (default: 16)."),
            click.option("--lr", type=float, help="Learning rate (default: 0.001)."),
            click.option("--seed", type=int,
                         help="Seed of the run: noise, initialisation, batch order (default: 0)."),
            click.option("--device", help="auto (default: CUDA when present), cpu, cuda or cuda:N."),
            click.option("--out", type=click.Path(file_okay=False, path_type=Path), help=out_help),
            click.option("--overwrite", is_flag=True, default=None,
                         help="Allow writing into a directory that holds a run."),
            click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
                         help="Set any config field, e.g. --set reweighter.options.alpha=0.01 "
                         "(repeatable)."),
        )):
            func = option(func)
        return func

    return decorate


#: where each flag of :func:`_run_options` goes in the config
_FLAG_PATHS: dict[str, tuple[str, ...]] = {
    **{key: (key, "name") for key in KINDS}, "noise_rate": ("noise", "rate"),
    "epochs": ("train", "epochs"), "max_steps": ("train", "max_steps"),
    "batch_size": ("train", "batch_size"), "lr": ("train", "lr"), "seed": ("seed",),
    "device": ("device",), "out": ("output", "dir"), "overwrite": ("output", "overwrite"),
}


def _config_data(config_file: Path | None, assignments: tuple[str, ...],
                 flags: dict[str, Any]) -> dict[str, Any]:
    """The settings a command line gives: the file, then the flags, then --set (plain data)."""
    from noisyseg.config import load_file, merge, parse_assignment  # (pydantic: when needed)

    data: dict[str, Any] = load_file(config_file) if config_file else {}
    for flag, value in flags.items():
        if value is None:
            continue
        nested: Any = str(value) if isinstance(value, Path) else value
        for key in reversed(_FLAG_PATHS[flag]):
            nested = {key: nested}
        data = merge(data, nested)
    for text in assignments:
        data = merge(data, parse_assignment(text))
    return data


@cli.command()
@_run_options("Run directory (default: runs/<time>-<dataset>-<noise>-<reweighter>).")
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path), metavar="RUN_DIR",
              help="Continue an interrupted run from its last checkpoint, as it was configured.")
@click.option("--nproc", type=click.IntRange(min=1), metavar="N",
              help="Train with N processes on this machine (data parallel: one GPU each on "
              "CUDA); each takes batch-size / N images of every batch.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@_friendly
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

    config = resolve(_config_data(config_file, assignments, flags))
    result = run_engine(config, progress=not quiet, nproc=nproc)
    _report(result.metrics, result.run_dir)


@cli.command()
@_run_options("Audit directory (default: runs/<time>-<dataset>-<noise>-audit; with --from: "
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
@_friendly
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

    data = _config_data(config_file, assignments, flags)
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


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--options", "options_of", metavar="NAME",
              help="Show the options of the component(s) called NAME: type, default, description.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@_friendly
def plugins(as_json: bool, options_of: str | None, debug: bool) -> None:
    """List every installed component by kind, with the plugin that supplies it.

    \b
    Columns: the name to pick it by (--reweighter NAME), the entry point that registered it
    with its package and version, and the first line of its description.

    \b
    Examples:
      noisyseg plugins
      noisyseg plugins --options mcpm      # every option of mcpm, set with --set reweighter.options.X=...
    """
    from noisyseg import listing, plugin_index

    index = plugin_index.load()
    if options_of is not None:
        if as_json:
            click.echo(json.dumps(listing.options_json(index, options_of), indent=2))
        else:
            click.echo("\n".join(listing.options(index, options_of)))
        return
    if as_json:
        click.echo(json.dumps(listing.table_json(index), indent=2))
        return
    click.echo("\n".join(listing.table(index)))


@cli.command("config")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Show this file resolved (defaults filled in, values checked).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@_friendly
def show_config(config_file: Path | None, debug: bool) -> None:
    """Print the resolved config (YAML), every component's options included; a starting point
    for your own file. With --config the components' options are checked too."""
    from noisyseg.config import dump, resolve

    if config_file is None:  # the defaults: from the plugin index, no plugin imported
        from noisyseg import listing, plugin_index

        click.echo(dump(resolve(listing.default_config(plugin_index.load(), {}))), nl=False)
        return
    from noisyseg.build import build_components, with_options
    from noisyseg.plugins import Registry, build_plugin_manager

    cfg = resolve(config_file)
    click.echo(dump(with_options(cfg, build_components(cfg, Registry(build_plugin_manager())))), nl=False)


def main() -> None:
    """Entry point of the console script: built-in commands plus those plugins register."""
    try:
        from noisyseg import plugin_index

        commands = plugin_index.load()["commands"]  # the plugins that add commands: only
        if commands:  # those are imported here (the others, and torch, when a run starts)
            from noisyseg.plugins import build_plugin_manager

            build_plugin_manager(only=commands).hook.register_commands(cli=cli)
    except NoisysegError as exc:  # a broken plugin must not break --help
        click.echo(f"Warning: {exc}", err=True)
    cli(prog_name="noisyseg")


if __name__ == "__main__":
    main()
