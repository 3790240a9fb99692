"""The table of kinds is the one place a kind is defined: a new row reaches the config, the
hooks, the registry, the command line, the check kit and a run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import noisyseg
from noisyseg import hookspecs, testing
from noisyseg.cli import KIND_TITLES
from noisyseg.config import Config
from noisyseg.kinds import KINDS
from noisyseg.testing import CHECKS

NEW_KIND = r'''
import importlib.util, sys
from pathlib import Path
# the table, loaded before the package so the new row is there when everything derives from it
spec = importlib.util.spec_from_file_location("noisyseg.kinds", sys.argv[1])
kinds = importlib.util.module_from_spec(spec)
sys.modules["noisyseg.kinds"] = kinds
spec.loader.exec_module(kinds)
kinds.KINDS["sampler"] = kinds.Kind("sampler", "Reweighter", "register_samplers", "sampler",
                                    "samplers", "plain", "check_reweighter")

import torch
import noisyseg
from noisyseg import Reweighter, hookimpl, build_plugin_manager, Registry
from noisyseg.cli import KIND_TITLES
from noisyseg.config import Config
from noisyseg.testing import CHECKS, tiny_run_config

class Plain(Reweighter):
    """Weight 1 (stands in for a sampler kind's first component)."""
    name = "plain"
    def weigh(self, ctx):
        return torch.ones_like(ctx.loss_map)

class Plugin:
    @hookimpl
    def register_samplers(self):
        return [Plain]

assert Config().sampler.name == "plain" and "samplers" in KIND_TITLES.values() and "sampler" in CHECKS
pm = build_plugin_manager(plugins=[Plugin()])
assert Registry(pm).names("sampler") == ["plain"]
result = noisyseg.run(tiny_run_config(output={"dir": sys.argv[2]}), plugin_manager=pm, progress=False)
saved = (Path(sys.argv[2]) / "config.yaml").read_text()
print("config.yaml sampler:", result.config.sampler.name, saved.count("sampler:"))
'''


def test_every_place_derives_from_the_table() -> None:
    assert list(KINDS) == ["dataset", "noise", "backbone", "loss", "reweighter", "corrector", "recipe"]
    for key, kind in KINDS.items():
        assert getattr(Config(), key).name == kind.default
        assert callable(getattr(hookspecs, kind.hook))
        assert KIND_TITLES[key] == kind.title
        assert CHECKS[key] is getattr(testing, kind.check_name)
        assert issubclass(kind.base, noisyseg.components.Component)


def test_a_new_kind_is_one_row(tmp_path: Path) -> None:
    table = Path(noisyseg.kinds.__file__)
    done = subprocess.run([sys.executable, "-c", NEW_KIND, str(table), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "config.yaml sampler: plain 1" in done.stdout
