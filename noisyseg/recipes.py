"""Run a recipe: its stages one after another, into one run directory.

    runs/<time>-<dataset>-<noise>-<recipe>/
        config.yaml      the run's config; recipe.options writes every stage out
        1-train/         stage 1: a run directory of its own (config.yaml, metrics, checkpoint.pt,
                         pictures); its config.yaml repeats that stage alone
        2-finetune/      stage 2, e.g. started from stage 1's weights
        metrics.json     the last stage's test metrics, and every stage's under "stages"

A stage's config is the run's config with the stage's overlay and rules applied
(:func:`stage_config`). Stage 1 takes every setting of the run. A later stage takes the data, the
noise, the network (the kinds whose ``per_stage`` is False, :mod:`noisyseg.kinds`) and the train
section, but picks its own loss, reweighter and corrector (its overlay, else the defaults), and
with ``step_share`` its own length. A setting of the run that a stage's overlay or rules set
otherwise is an error naming both, not a silent override.

A recipe of one stage runs in the run directory itself, as a plain run would. A stage that
finished is not run again: ``--resume`` goes on from the first stage that did not.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from noisyseg import distributed, rundir
from noisyseg.build import build_components, with_options
from noisyseg.components import Recipe, Stage
from noisyseg.config import Config, load_file, merge, resolve
from noisyseg.engine import RunResult, run
from noisyseg.errors import ConfigError
from noisyseg.kinds import KINDS
from noisyseg.plugins import Registry
from noisyseg.rundir import is_recipe_dir

__all__ = ["Finished", "is_recipe_dir", "run_recipe", "stage_config", "stage_dir"]

#: settings that give a run its length: a stage with ``step_share`` sets its own
_LENGTH = ("epochs", "max_steps", "steps")


@dataclass
class Finished:
    """What a finished stage leaves for the next: its resolved config and final metrics."""

    config: Config
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    result: RunResult | None = None


def stage_dir(run_dir: Path, index: int, stage: Stage) -> Path:
    """The run directory of stage ``index`` (0-based) inside the recipe's."""
    return run_dir / f"{index + 1}-{stage.name}"


def stage_config(base: Config, recipe: Recipe, index: int, previous: Finished | None,
                 registry: Registry, out: Path | None) -> Config:
    """The config of stage ``index`` (0-based) of ``recipe``, from the run's config ``base``.

    Args:
        previous: the stage before (its config and metrics), for the rules relative to it.
        out: the stage's run directory; None for a recipe of one stage, which keeps the run's
            own directory and its ``recipe`` section.
    """
    stage = recipe.stages[index]
    where = f"recipe '{recipe.name}', stage {index + 1} '{stage.name}'"
    data = base.model_dump(mode="json")
    if index > 0:  # a later stage: the data and the network carry over, the method does not
        for key, kind in KINDS.items():
            if kind.per_stage:
                data[key] = {"name": kind.default, "options": {}}
        if stage.step_share is not None:
            defaults = Config().train
            data["train"].update({k: getattr(defaults, k) for k in _LENGTH})
    else:
        _refuse_contradictions(base, stage.set, where, registry)
        for key, value in stage.set.items():  # a component picked by another name: its options go
            if key in KINDS and isinstance(value, dict) and value.get("name", data[key]["name"]) != \
                    data[key]["name"]:
                data[key] = {"name": value["name"], "options": {}}
        data = merge(data, stage.set)
    if index > 0:
        data = merge(data, stage.set)
    rules = _rule_settings(base, recipe, stage, index, previous)
    _refuse_contradictions(base, rules, where, registry, rule=True)
    data = merge(data, rules)
    if out is not None:
        data["recipe"] = {"name": KINDS["recipe"].default, "options": {}}
        data["output"] = {**data["output"], "dir": str(out), "overwrite": True}
    try:
        return resolve(data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _rule_settings(base: Config, recipe: Recipe, stage: Stage, index: int,
                   previous: Finished | None) -> dict[str, Any]:
    """What the stage's rules set, as config data."""
    train: dict[str, Any] = {}
    share = recipe.options.calibration_share
    if share is not None:
        train.update(calibrate=True, calibration_share=share)
    if stage.meta_only:
        train["meta_only"] = True
    if index > 0:
        assert previous is not None
        if stage.start_from_previous:
            train["init_from"] = str(previous.config.output.dir)
        if stage.lr_factor is not None:
            train["lr"] = float(f"{previous.config.train.lr * stage.lr_factor:.12g}")
        if stage.step_share is not None:
            train["steps"] = max(1, round(stage.step_share * int(previous.metrics["steps"])))
    return {"train": train} if train else {}


def _refuse_contradictions(base: Config, overlay: dict[str, Any], where: str, registry: Registry,
                           rule: bool = False) -> None:
    """A setting of the run (not its default) that ``overlay`` sets to another value is a
    one-line error naming both. Rules that follow from the stage before (its weights, lr and
    steps) and the run's length are not settings of the run the user chose for that stage."""
    data = base.model_dump(mode="json")
    for path, value in _leaf_items(overlay):
        if rule and path in (("train", "init_from"), ("train", "lr")):
            continue  # stage 1 takes the run's; a later one its predecessor's (not a choice)
        if rule and path == ("train", "steps") and base.train.steps is None:
            continue
        given = _get(data, path)
        if given is _MISSING or given == value or given == _default(base, path, registry):
            continue
        key = ".".join(path)
        what = "its rules set" if rule else "it sets"
        raise ConfigError(f"{key} = {given} contradicts {where}: {what} {key} = {value}; drop "
                          f"{key} from the run's settings, or change the recipe's options "
                          f"(recipe.options)")


_MISSING = object()


def _leaf_items(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out += _leaf_items(value, (*prefix, key))
        else:
            out.append(((*prefix, key), value))
    return out


def _get(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return _MISSING
        data = data[key]
    return data


def _default(base: Config, path: tuple[str, ...], registry: Registry) -> Any:
    """The value ``path`` takes when nobody sets it: the config's default, or for a component's
    option the default of the component the run picked."""
    if len(path) > 2 and path[0] in KINDS and path[1] == "options":
        cls = registry.get(path[0], getattr(base, path[0]).name)
        return _get(cls.Options().model_dump(mode="json"), path[2:])
    return _get(Config().model_dump(mode="json"), path)


def run_recipe(cfg: Config | None, pm: pluggy.PluginManager, progress: bool = True,
               resume: Path | None = None, nproc: int | None = None,
               handed: bool = False, label: str = "") -> RunResult:
    """Run every stage of the config's recipe into one run directory (or go on with the one in
    ``resume``). ``handed``: ``pm`` was given by the caller (it then reaches every stage);
    ``label`` goes before each stage's name in the progress bar."""
    registry = Registry(pm)
    world = distributed.env_world()
    top, cfg, created = _top_dir(cfg, resume, registry, world)
    recipe = registry.build("recipe", cfg.recipe.name, cfg.recipe.options)
    stages = recipe.stages
    if resume is None and world.is_main:
        top.mkdir(parents=True, exist_ok=True)
        (top / rundir.FINAL).unlink(missing_ok=True)
        rundir.write_config(top, cfg)
    finished: list[Finished] = []
    try:
        for i, stage in enumerate(stages):
            where = stage_dir(top, i, stage)
            shown = f"{label} stage {i + 1}/{len(stages)} {stage.name}".strip()
            if resume is not None and (where / rundir.FINAL).exists():
                finished.append(_read_finished(where))
                continue
            kwargs: dict[str, Any] = {"progress": progress, "nproc": nproc, "label": shown}
            if handed and not (nproc or 1) > 1:
                kwargs["plugin_manager"] = pm
            if resume is not None and (where / rundir.CHECKPOINT).exists():
                result = run(resume=where, **kwargs)
            else:
                config = stage_config(cfg, recipe, i, finished[-1] if finished else None, registry,
                                      where)
                result = run(config, **kwargs)
            finished.append(Finished(result.config, result.metrics, result.history, result))
    except BaseException as exc:
        kept = any(stage_dir(top, i, s).exists() for i, s in enumerate(stages))
        if world.is_main and created and not kept:
            shutil.rmtree(top, ignore_errors=True)
        if isinstance(exc, KeyboardInterrupt) and world.is_main:
            exc.__notes__ = [f"the finished stages and epochs are kept in {top}; continue with: "
                             f"noisyseg run --resume {top}" if kept else "nothing was kept"]
        raise
    return _recipe_result(top, cfg, stages, finished, world)


def _top_dir(cfg: Config | None, resume: Path | None, registry: Registry,
             world: distributed.World) -> tuple[Path, Config, bool]:
    """The recipe's run directory, its config (every component's options filled in) and whether
    this run creates the directory; for ``resume``, the directory and config of the run to go on."""
    if resume is not None:
        top = Path(resume)
        if (top / rundir.FINAL).exists():
            raise ConfigError(f"cannot resume: {top} holds a finished run ({rundir.FINAL}); nothing to do")
        return top, resolve(load_file(top / rundir.CONFIG)), False
    assert cfg is not None
    top = Path(cfg.output.dir) if cfg.output.dir is not None else rundir.default_dir(cfg)
    if world.is_main:
        rundir.check_free(top, cfg.output.overwrite)
    created = not top.exists()
    return top, with_options(cfg, build_components(cfg, registry), keep_auto=True), created


def _recipe_result(top: Path, cfg: Config, stages: list[Stage], finished: list[Finished],
                   world: distributed.World) -> RunResult:
    """The recipe's result from its finished stages: the last stage's test metrics and every
    stage's (written to ``top`` by the main process), the history of them all."""
    final = {**finished[-1].metrics,
             "stages": {stage_dir(top, i, s).name: f.metrics
                        for i, (s, f) in enumerate(zip(stages, finished, strict=True))}}
    if world.is_main and finished[-1].metrics:
        rundir.write_final(top, final)
    history = [{**record, "stage": s.name}
               for s, f in zip(stages, finished, strict=True) for record in f.history]
    last = finished[-1].result
    return RunResult(run_dir=top, metrics=final if finished[-1].metrics else {}, history=history,
                     config=cfg, model=last.model if last is not None else None,
                     reweighter=last.reweighter if last is not None else None,
                     corrector=last.corrector if last is not None else None,
                     loss=last.loss if last is not None else None)


def _read_finished(where: Path) -> Finished:
    """A stage that finished before a resume, read back from its run directory."""
    metrics = json.loads((where / rundir.FINAL).read_text())
    history_file = where / rundir.HISTORY
    history = [json.loads(line) for line in history_file.read_text().splitlines() if line.strip()] \
        if history_file.exists() else []
    return Finished(resolve(load_file(where / rundir.CONFIG)), metrics, history)
