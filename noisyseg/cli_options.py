"""What the commands of :mod:`noisyseg.cli` share: the options that configure a run
(:func:`run_options`, one flag per kind of component among them), the config data a command line
gives (:func:`config_data`), and :func:`friendly`, which turns noisyseg's errors into one line
and an exit code. Imports click alone, not torch.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from noisyseg.errors import NoisysegError
from noisyseg.kinds import KINDS


def kind_flags(func: Callable[..., Any]) -> Callable[..., Any]:
    """One flag per kind of component (--dataset, --noise, ... --corrector): its name."""
    for kind in reversed(KINDS.values()):
        func = click.option(f"--{kind.key}", metavar="NAME",
                            help=f"The {kind.label}, by name (default: {kind.default}"
                                 f"{': ' + kind.default_means if kind.default_means else ''}).")(func)
    return func


def friendly(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn NoisysegError into one readable line and its exit code (unless --debug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug", False)
        try:
            return func(*args, **kwargs)
        except NoisysegError as exc:
            if debug:
                raise
            if is_main_process():
                click.echo(f"Error: {exc}", err=True)
            else:  # under torchrun every process fails alike: rank 0 says it, the others let
                time.sleep(1)  # it finish before torchrun stops everything on their exit
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:  # Ctrl-C: say what is kept and how to go on
            if debug:
                raise
            if is_main_process():
                notes = getattr(exc, "__notes__", None)
                click.echo("Interrupted" + (": " + "; ".join(notes) if notes else "."), err=True)
            sys.exit(130)

    return wrapper


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def run_options(out_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options that configure a run (--config, the component flags, --epochs ... --set), for
    every command that trains; ``out_help`` says what --out names."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed((
            click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                         help="TOML, YAML or JSON file; flags given here override it."),
            kind_flags,
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


#: where each flag of :func:`run_options` goes in the config
FLAG_PATHS: dict[str, tuple[str, ...]] = {
    **{key: (key, "name") for key in KINDS}, "noise_rate": ("noise", "rate"),
    "epochs": ("train", "epochs"), "max_steps": ("train", "max_steps"),
    "batch_size": ("train", "batch_size"), "lr": ("train", "lr"), "seed": ("seed",),
    "device": ("device",), "out": ("output", "dir"), "overwrite": ("output", "overwrite"),
}


def config_data(config_file: Path | None, assignments: tuple[str, ...],
                 flags: dict[str, Any]) -> dict[str, Any]:
    """The settings a command line gives: the file, then the flags, then --set (plain data)."""
    from noisyseg.config import load_file, merge, parse_assignment  # (pydantic: when needed)

    data: dict[str, Any] = load_file(config_file) if config_file else {}
    for flag, value in flags.items():
        if value is None:
            continue
        nested: Any = str(value) if isinstance(value, Path) else value
        for key in reversed(FLAG_PATHS[flag]):
            nested = {key: nested}
        data = merge(data, nested)
    for text in assignments:
        data = merge(data, parse_assignment(text))
    return data
