"""The ``dprad`` command line: the typer app built from :mod:`dprad.commands`, and :func:`main`.

Each command parses its flags, calls one library function and renders the result; the command modules
hold them, one module per group of commands.
"""

from __future__ import annotations

import sys

import typer

from dprad.commands import (
    audit,
    data,
    evaluate,
    export,
    federate,
    label,
    predict,
    report,
    serve,
    sweep,
    train,
)
from dprad.config import flag_message
from dprad.errors import DpradError, ParameterError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Differentially private radiology-report classifiers."
)
# in the order `dprad --help` lists them
for module in (data, label, train, federate, predict, evaluate, sweep, audit, export, serve, report):
    module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        # with standalone_mode=False click *returns* a command's typer.Exit code instead of exiting: pass
        # it on, or `monitor` alerts and failed sweep cells would exit 0 and page no scheduler
        rc = app(args=argv, standalone_mode=False)
    except DpradError as err:
        # a mechanism names its parameter ("epsilon"); the user typed a flag ("--epsilon")
        message = flag_message(err) if isinstance(err, ParameterError) else str(err)
        print(f"dprad: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except typer.Exit as ex:
        raise SystemExit(ex.exit_code) from None
    except Exception as err:
        # typer may vendor its own click: recognise click's exceptions by class name, not by module
        kinds = {k.__name__ for k in type(err).__mro__}
        if "Abort" in kinds:
            raise SystemExit(130) from None
        if "ClickException" in kinds:
            err.show()  # type: ignore[attr-defined]
            raise SystemExit(err.exit_code) from None  # type: ignore[attr-defined]
        raise
    if isinstance(rc, int) and not isinstance(rc, bool) and rc != 0:
        raise SystemExit(rc)
