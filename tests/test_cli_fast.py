"""The command line answers without importing torch: names, summaries and options come from the
plugin index (noisyseg/plugin_index.py), rebuilt when a plugin changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from noisyseg import plugin_index

ROOT = Path(__file__).resolve().parent.parent
PROBE = ("import runpy, sys; sys.argv = ['noisyseg', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('noisyseg.cli', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         "print('TORCH', 'torch' in sys.modules, file=sys.stderr)")


def _cli(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          env={**os.environ, "NOISYSEG_CACHE": str(cache)}, timeout=300, check=False)


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder whose plugin index was built by a first command."""
    cache = tmp_path_factory.mktemp("cache")
    first = _cli(["plugins"], cache)
    assert first.returncode == 0, first.stderr[-2000:]
    assert len(list(cache.glob("plugin-index-*.json"))) == 1
    return cache


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["plugins"],
                                  ["plugins", "--options", "mcpm"], ["plugins", "--json"], ["config"]])
def test_the_command_line_answers_without_torch(warm: Path, args: list[str]) -> None:
    done = _cli(args, warm)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "TORCH False" in done.stderr, f"noisyseg {' '.join(args)} imported torch"
    assert done.stdout.strip()


def test_the_index_shows_what_the_plugins_themselves_say(warm: Path) -> None:
    """The listing and every option row equal what importing the plugins gives."""
    saved = json.loads(next(warm.glob("plugin-index-*.json")).read_text())
    fresh = plugin_index.build()
    assert saved["kinds"] == json.loads(json.dumps(fresh["kinds"]))
    assert saved["commands"] == fresh["commands"] == []


@pytest.mark.parametrize("data", [{}, {"reweighter": {"name": "mcpm"}}])
def test_config_from_the_index_equals_the_resolved_default(data: dict) -> None:
    """Without torch, ``noisyseg config`` fills the options, train_on_meta and corrector "auto"
    as a run does."""
    from noisyseg import listing
    from noisyseg.build import build_components, with_options
    from noisyseg.config import dump, resolve
    from noisyseg.plugins import Registry, build_plugin_manager

    cfg = resolve(data)
    slow = dump(with_options(cfg, build_components(cfg, Registry(build_plugin_manager()))))
    assert dump(resolve(listing.default_config(plugin_index.build(), data))) == slow


def test_a_changed_plugin_file_makes_the_index_stale() -> None:
    before = plugin_index.fingerprint()
    plugin = ROOT / "plugins" / "noisyseg_gce" / "__init__.py"
    stat = plugin.stat()
    try:
        os.utime(plugin, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        assert plugin_index.fingerprint() != before
    finally:
        os.utime(plugin, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert plugin_index.fingerprint() == before
