"""The `toolsel` command: one subcommand per DVC stage (stage name = command name = params section)."""

from __future__ import annotations

import importlib
import sys

import typer

from toolsel import __version__

STAGES = ["ingest", "dedup", "split", "base", "render", "train", "fuse", "eval"]

app = typer.Typer(
    name="toolsel",
    help="Turn coding-agent traces into a tool-selection dataset and fine-tune DiffusionGemma on MLX.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"toolsel {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Each stage runs alone as `toolsel <stage>`; `dvc repro` runs them all."""


def _mount() -> None:
    for name in STAGES:
        try:
            module = importlib.import_module(f"stages.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"stages.{name}":
                raise
            continue  # stage not built yet
        app.command(name=name, help=module.__doc__)(getattr(module, name))


_mount()


def main() -> None:
    from toolsel import blas

    blas.reexec_with_fast_blas()
    app()


if __name__ == "__main__":
    main()
