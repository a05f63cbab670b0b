"""The `retrieval` command line: typer subcommands, one module per stage, heavy imports inside each command."""

from __future__ import annotations

import typer

from retrieval.cli import archive, bench, index, link, model, search, serve

app = typer.Typer(
    help="Content-based medical image retrieval with a distortion-aware learned similarity metric.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Registered in data-flow order, which is the order `--help` lists them in.
for command in (archive.scan, archive.distort, model.train, model.calibrate, index.index, search.search, link.link, index.remove, index.info, index.qc,
                index.demo, serve.serve, bench.bench):
    app.command()(command)


def main() -> None:
    """Console-script entry point."""
    app()
