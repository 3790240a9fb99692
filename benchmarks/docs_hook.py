"""mkdocs hook (mkdocs.yml ``hooks``): the leaderboard page is rebuilt from the results store
before every docs build, so the site never shows numbers the store does not hold."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks import each other

import leaderboard  # noqa: E402


def on_pre_build(config: Any) -> None:
    leaderboard.write(readme=False)
