"""Command line: ``xray-pipeline simulate | ingest | calibrate | run | afterglow fit | mtf | characterise | export |
info | set-attrs | demo | bench | config``.

The only package that prints or exits. Errors the pipeline raises on purpose become one line on stderr and exit
status 2; no traceback. The commands live in :mod:`.data` (recordings), :mod:`.runs` (correction) and
:mod:`.measure` (figures), their shared options in :mod:`.options`.
"""

from __future__ import annotations

import sys

import click

from ..errors import AlreadyComplete, PipelineError, RunInterrupted
from . import data, measure, runs  # noqa: F401  (the commands register on the group)
from .app import cli
from .runs import describe_findings, describe_time

__all__ = ["cli", "main", "console", "describe_time", "describe_findings"]


def main(argv=None) -> int:
    """Entry point of the ``xray-pipeline`` console script."""
    import warnings

    warnings.filterwarnings("ignore", message=".*NaN/Inf pixels in the input.*")  # the CLI says it itself
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="numpy.*")  # NumPy's own (all-NaN slices): noise

    def one_line(message, category, filename, lineno, file=None, line=None):  # no source path, no code line
        click.echo(f"warning: {str(message).splitlines()[0] if str(message) else category.__name__}", err=True)

    warnings.showwarning = one_line
    try:
        rv = cli.main(args=argv, prog_name="xray-pipeline", standalone_mode=False)
    except RunInterrupted:
        import shlex

        args = list(sys.argv[1:] if argv is None else argv)
        again = shlex.join(["xray-pipeline", *args, *([] if "--resume" in args else ["--resume"])])
        click.echo(f"error: interrupted; the finished blocks are kept: resume with '{again}'", err=True)
        return 130
    except AlreadyComplete as exc:
        click.echo(str(exc))
        return 0
    except PipelineError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted: no output path was replaced (an interrupted 'run' keeps its finished blocks for "
                   "--resume)", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except OSError as exc:
        click.echo(f"error: {exc.strerror or exc} ({exc.filename or ''}); check the path and free space", err=True)
        return 2
    # a command may return its exit status ('stability': 3 when a limit fails); click's own Exit gives its code
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0


def console(argv=None) -> int:
    """The ``xray-pipeline`` console script: :func:`main`, then a quick exit.

    The process ends right after the command, so the objects it made (about 150,000 that the cyclic collector
    tracks: Numba's, Zarr's, Dask's) are frozen out of the collector: the interpreter's shutdown would otherwise
    traverse them in several full passes of 0.07 s each, 0.3-0.4 s of a 1.6 s tiny run. Nothing that holds data is
    skipped: every output is closed and every lock released inside the command, and ``atexit`` handlers (temporary
    folders among them) still run. Only for the script: a caller in its own process (tests, notebooks) calls
    :func:`main` and keeps its collector.
    """
    import gc

    try:
        return main(argv)
    finally:
        gc.freeze()
