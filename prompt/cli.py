"""Command-line helpers shared by every entry point (the bottom layer: imports nothing from the package)."""
from __future__ import annotations

import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad flags on one line (`error: ...`) and exits 2."""

    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
