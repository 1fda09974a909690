"""Command-line helpers shared by every entry point: the parser, the model and thread flags (the bottom layer:
imports nothing from the package)."""
from __future__ import annotations

import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad flags on one line (`error: ...`) and exits 2."""

    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


MODEL_PATH_HELP = "Prompt-token folder or Hub repo id (default: the default model's)."
THREADS_HELP = "torch CPU threads (default: torch's choice)."


def add_model_flags(parser: argparse.ArgumentParser, model_path: str | None = MODEL_PATH_HELP, *,
                    threads: str | None = THREADS_HELP, threads_default: int | None = None,
                    underscore_alias: bool = False) -> argparse.ArgumentParser:
    """The flags every entry point spells the same way: `--model-path` (help `model_path`; None: not declared;
    `underscore_alias`: also `--model_path`, as upstream's scripts spell it) and `--threads` (help `threads`,
    default `threads_default`; None: not declared), applied by `apply_threads`. Returns the parser."""
    if model_path is not None:
        names = ("--model-path", "--model_path") if underscore_alias else ("--model-path",)
        parser.add_argument(*names, dest="model_path", default=None, help=model_path)
    if threads is not None:
        parser.add_argument("--threads", type=int, default=threads_default, help=threads)
    return parser


def apply_threads(threads: int | None) -> None:
    """--threads: torch's CPU threads when given (None or 0: torch's choice)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
