"""The ``noisyseg`` command line (click).

Every error noisyseg raises on purpose is printed as one line on stderr, with exit code 2 for
bad input (click's convention) and 1 for a failure during training (a NaN loss); ``--debug``
shows the traceback instead.

This module holds the group and the commands that answer without importing torch (``plugins``,
``config``); the commands that train are :mod:`noisyseg.cli_train`, the options and the error
handling they share :mod:`noisyseg.cli_options`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import click

from noisyseg.cli_options import friendly
from noisyseg.cli_train import audit, run
from noisyseg.errors import NoisysegError
from noisyseg.kinds import KINDS

KIND_TITLES = {key: kind.title for key, kind in KINDS.items()}


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


cli.add_command(run)
cli.add_command(audit)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--options", "options_of", metavar="NAME",
              help="Show the options of the component(s) called NAME: type, default, description.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@friendly
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
@friendly
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
