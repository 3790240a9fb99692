from __future__ import annotations

import types
import warnings
from importlib import metadata
from pathlib import Path

import pytest
import torch

from noisyseg import (
    ConfigError,
    PluginError,
    Registry,
    Reweighter,
    StepContext,
    build_plugin_manager,
    hookimpl,
    run,
)
from noisyseg.plugins import PluginLoadWarning
from noisyseg.testing import check_reweighter, tiny_run_config


class HalfReweighter(Reweighter):
    """Every pixel weighs one half (a throwaway test plugin)."""

    name = "half"

    def weigh(self, ctx: StepContext) -> torch.Tensor:
        return torch.full_like(ctx.loss_map, 0.5)


class HalfPlugin:
    @hookimpl
    def register_reweighters(self) -> list[type[Reweighter]]:
        return [HalfReweighter]


def test_throwaway_plugin_adds_a_reweighter_that_run_uses(tmp_path: Path) -> None:
    pm = build_plugin_manager(plugins=[HalfPlugin()])
    try:
        assert "half" in Registry(pm).names("reweighter")
        check_reweighter(HalfReweighter)
        config = tiny_run_config(reweighter={"name": "half"}, output={"dir": str(tmp_path / "r")})
        result = run(config, plugin_manager=pm, progress=False)
        assert result.config.reweighter.name == "half"
        assert (tmp_path / "r" / "metrics.json").exists()
    finally:
        for plugin in list(pm.get_plugins()):
            pm.unregister(plugin)


def test_builtin_plugins_come_through_the_entry_point_group() -> None:
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="noisyseg")}
    assert {"baselines", "noise", "backbones", "datasets"} <= set(eps)
    pm = build_plugin_manager()
    assert pm.distributions["noise"][0] == "noisyseg"


def test_manager_without_entry_points_has_no_components() -> None:
    registry = Registry(build_plugin_manager(entry_points=False))
    assert registry.names("reweighter") == []


def test_duplicate_name_names_both_plugins() -> None:
    class Dup(HalfReweighter):
        name = "none"

    class DupPlugin:
        @hookimpl
        def register_reweighters(self) -> list[type[Reweighter]]:
            return [Dup]

    pm = build_plugin_manager(plugins=[DupPlugin()])
    with pytest.raises(PluginError, match=r"duplicate reweighter name 'none'.*'baselines'.*DupPlugin"):
        Registry(pm)


def test_unknown_name_lists_the_choices(registry: Registry) -> None:
    choices = "coteaching, distil, gce, l2rw, mcpm, mwnet, none, oracle"
    with pytest.raises(ConfigError, match=rf"unknown reweighter 'mcmp'; choose one of: {choices}"):
        registry.get("reweighter", "mcmp")
    with pytest.raises(ConfigError, match=r"unknown noise model 'dilate'; choose one of: .*dilation"):
        registry.build("noise", "dilate")


def test_hook_returning_a_non_component_is_reported() -> None:
    class Bad:
        @hookimpl
        def register_backbones(self) -> list[object]:
            return [torch.nn.Conv2d]

    with pytest.raises(PluginError, match=r"not a subclass of noisyseg.components.Backbone"):
        Registry(build_plugin_manager(plugins=[Bad()]))


def test_invalid_component_options_name_the_field(registry: Registry) -> None:
    with pytest.raises(ConfigError, match=r"noise.options.max_radius"):
        registry.build("noise", "dilation", {"max_radius": -1})
    with pytest.raises(ConfigError, match=r"noise.options.radius: Extra inputs"):
        registry.build("noise", "dilation", {"radius": 3})


def test_plugin_that_raises_on_import_is_skipped_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    real = metadata.entry_points

    class BrokenEntryPoint:
        name = "broken"
        value = "noisyseg_broken"
        dist = types.SimpleNamespace(name="noisyseg-broken", version="9.9")

        def load(self) -> object:
            raise ImportError("No module named 'missing_dependency'")

    def fake_entry_points(**kwargs: object) -> list[object]:
        return [BrokenEntryPoint(), *real(**kwargs)]

    monkeypatch.setattr(metadata, "entry_points", fake_entry_points)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry = Registry(build_plugin_manager())
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginLoadWarning)]
    assert messages and "plugin 'broken' (noisyseg-broken) failed to import" in messages[0]
    assert "missing_dependency" in messages[0]
    assert "dilation" in registry.names("noise")     # the rest still load


def test_autoload_env_var_keeps_only_builtin_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    real = metadata.entry_points

    class ThirdParty:
        name = "thirdparty"
        value = "x"
        dist = types.SimpleNamespace(name="noisyseg-x", version="1")

        def load(self) -> object:  # pragma: no cover - must not be called
            raise AssertionError("third-party plugin loaded although autoload is disabled")

    monkeypatch.setattr(metadata, "entry_points", lambda **kw: [ThirdParty(), *real(**kw)])
    monkeypatch.setenv("NOISYSEG_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "none" in Registry(build_plugin_manager()).names("reweighter")


def test_names_accept_wildcards(registry: Registry) -> None:
    assert registry.names("noise", "*ion") == ["dilation", "erosion"]
