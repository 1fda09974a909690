"""User-facing errors and the command-line wrapper that turns them into one clear line."""
from __future__ import annotations

import functools
import sys


class PPDError(Exception):
    """An error caused by the user's input (a path, a flag, a file's content).

    Command-line entry points print its message on one line and exit non-zero, without a traceback.
    """


def cli_entry(main):
    """Decorate a `main()` so that bad input ends in `error: <message>` on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except PPDError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
