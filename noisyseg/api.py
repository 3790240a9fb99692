"""``noisyseg.run``: one run, or every stage of a recipe (:mod:`noisyseg.recipes`), from a config
in any form; the stages themselves are runs of :mod:`noisyseg.engine`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pluggy

from noisyseg import engine, recipes
from noisyseg.config import Config, resolve
from noisyseg.engine import RunResult
from noisyseg.errors import ConfigError
from noisyseg.kinds import KINDS
from noisyseg.plugins import Registry, build_plugin_manager


def run(
    config: Config | dict[str, Any] | str | Path | None = None,
    *,
    plugin_manager: pluggy.PluginManager | None = None,
    progress: bool = True,
    resume: str | Path | None = None,
    nproc: int | None = None,
    label: str = "",
    **overrides: Any,
) -> RunResult:
    """Train one model as ``config`` says and evaluate it on the clean test split; with a
    ``recipe`` of several stages, train them one after another into one run directory.

    Args:
        config: a :class:`Config`, plain data, a path to a TOML/YAML/JSON file, or None.
        plugin_manager: use this manager (default: a fresh one with every installed plugin).
        progress: show a progress bar.
        resume: continue the run (or the recipe) in this directory from its last checkpoint, as
            it was configured (give no ``config`` or overrides with it). The result is the same
            as that of an uninterrupted run.
        nproc: train with this many processes on this machine (data parallel, see
            :mod:`noisyseg.distributed`); each takes ``train.batch_size / nproc`` images of every
            batch. The result's ``reweighter`` and ``corrector`` are then None. Under ``torchrun``
            leave it out: the processes are already there.
        label: shown before the epoch (and the stage) in the progress bar.
        **overrides: config fields with ``__`` for nesting, e.g. ``train__epochs=3``.
    """
    handed = plugin_manager is not None
    if resume is not None:
        if config is not None or overrides:
            raise ConfigError("resume continues a run as it was configured; give no other settings")
        if recipes.is_recipe_dir(Path(resume)):
            return recipes.run_recipe(None, plugin_manager or build_plugin_manager(), progress,
                                      resume=Path(resume), nproc=nproc, handed=handed, label=label)
        return engine.run(resume=resume, plugin_manager=plugin_manager, progress=progress,
                          nproc=nproc, label=label)
    cfg = resolve(config, **overrides)
    if cfg.recipe.name != KINDS["recipe"].default or cfg.recipe.options:
        pm = plugin_manager or build_plugin_manager()
        registry = Registry(pm)
        recipe = registry.build("recipe", cfg.recipe.name, cfg.recipe.options)
        if len(recipe.stages) > 1:
            return recipes.run_recipe(cfg, pm, progress, nproc=nproc, handed=handed, label=label)
        cfg = recipes.stage_config(cfg, recipe, 0, None, registry, out=None)
    return engine.run(cfg, plugin_manager=plugin_manager, progress=progress, nproc=nproc,
                      label=label)
