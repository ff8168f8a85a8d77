"""What every pipeline CLI shares: mistakes a user can fix end the command as one line, with exit code 2.

Each script ends with `run(main)` instead of `main()`. `main(argv)` itself raises normally, so tests and
other Python callers see the real exception; only the command line turns ConfigError (tood.config),
DataError (tood.data.dataset) and CliError (a bad argument: a missing checkpoint, an output folder inside the
input) into `<module>: error: <message>` on stderr, with no traceback. Anything else is a bug and keeps
its traceback.

The scripts import torch, MLflow and pycocotools inside main(), after argument parsing, so that `--help`
and argument errors answer without paying for them (several seconds on a 2-core machine).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from tood.config import ConfigError


class CliError(Exception):
    """A command-line argument names something unusable; the message says which and why."""


def is_user_error(exc: BaseException) -> bool:
    """ConfigError, CliError, or tood.data.dataset.DataError.

    DataError is found through sys.modules rather than imported: tood.data.dataset imports torch, which would undo
    the lazy imports, and an exception of that class can only exist once its module has been loaded.
    """
    data = sys.modules.get("tood.data.dataset")
    kinds = (ConfigError, CliError, *((data.DataError,) if data is not None else ()))
    return isinstance(exc, kinds)


def one_line(exc: BaseException) -> str:
    """The exception's message on a single line (a multi-line message keeps its lines, joined by '; ')."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def run(main: Callable[[], int | None]) -> NoReturn:
    """Run a CLI's main() on sys.argv and exit with its code; a user error exits 2 with one line."""
    try:
        code = main()
    except Exception as exc:
        if not is_user_error(exc):
            raise
        print(f"{_prog(main)}: error: {one_line(exc)}", file=sys.stderr)
        code = 2
    sys.exit(code or 0)


def _prog(main: Callable) -> str:
    """`pipeline.predict` for `python -m pipeline.predict` (whose __module__ is "__main__"), else the script."""
    spec = getattr(sys.modules.get(main.__module__), "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).name


def prog(spec) -> str | None:
    """argparse's `prog` for a CLI module: `python -m pipeline.check_params` in its usage line, which is how
    the README and dvc.yaml run it (argparse's default, the script's file name `check_params.py`, is not a
    command that works). `spec` is the module's `__spec__` (None when the file is run as a script)."""
    return f"python -m {spec.name}" if spec is not None else None
