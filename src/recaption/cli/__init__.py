"""The ``recaption`` command: a typer app assembled from one module per area.

Each module in :data:`AREAS` exposes ``register(app)`` and adds its commands or command groups; the command
functions are thin and import heavy libraries (torch, transformers) inside their bodies, so that
``recaption --help`` stays fast.
"""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from recaption.records import RecordError

AREAS = ("world", "io", "captioner", "pipeline", "t2i", "upsample", "eval")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Better captions for text-to-image training, and the shapes world to measure them.")


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for _area in AREAS:
    importlib.import_module(f"recaption.cli.{_area}").register(app)


class UserError(Exception):
    """A problem with what the user asked for; printed as one line, no traceback."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; user-facing errors become one clear line and exit code 2."""
    try:
        app(args=argv, standalone_mode=True)
    except (UserError, RecordError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
