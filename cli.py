"""What the programs share on the command line: a user's mistake ends a program with one line.

``train.py``, ``test.py``, ``demo.py``, ``demo_pix2pixhd.py``, ``cluster_features.py``, ``python -m
models.public_checkpoints`` and the
benchmarks' scripts answer a mistake in what they were given (an argument, a file, a
configuration setting) with one line ``PROGRAM: error: MESSAGE`` on stderr and exit status 2,
as argparse does for a malformed argument, and no traceback. A bug keeps its traceback.

The mechanism: code that checks what the user gave raises a :class:`UsageError` (or a
subclass: ``training.config.ConfigError``, ``training.checkpoint.CheckpointError``,
:class:`MissingFileError`, ...) whose message names the argument, file or setting and what was
expected; :class:`ArgumentParser` raises one for argparse's own errors; :func:`run`, each
program's entry point, turns it into the one line. Called in-process (``train.main(argv)``),
the programs raise it like any other exception.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import torch

T = TypeVar("T")

EXIT_USAGE = 2  # argparse's exit status for a malformed command line
DEVICES = "cpu, cuda or cuda:N"


class UsageError(ValueError):
    """A mistake in what the user asked for; the message names the argument, file or setting
    and what was expected."""


class MissingFileError(UsageError, FileNotFoundError):
    """A file the user named is not there."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are :class:`UsageError`: one line through :func:`run`,
    without the usage text (``--help`` shows it)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def one_line(text: str) -> str:
    return " ".join(text.split())


def run(main: Callable[[], T], prog: str | None = None) -> T:
    """``main()``, with a :class:`UsageError` ending the program as ``PROG: error: MESSAGE`` (one
    line on stderr) and exit status 2. ``prog`` defaults to the script's name."""
    try:
        return main()
    except UsageError as error:
        print(f"{prog or os.path.basename(sys.argv[0])}: error: {one_line(str(error))}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def short_reason(error: BaseException) -> str:
    """The exception's type and the first sentence of its message: what a user needs of a
    library's error about their file, without the library's advice."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    first = first.split(". ")[0].rstrip(".")
    return f"{type(error).__name__}: {first[:160]}" if first else type(error).__name__


def require_file(path: Path, argument: str) -> Path:
    """``path``, or a :class:`MissingFileError` naming ``argument`` when no file is there."""
    if not path.is_file():
        raise MissingFileError(f"{argument}: no file at {path}")
    return path


# ----------------------------------------------------------------------------- argparse types
# Their ArgumentTypeError becomes "argument --NAME: MESSAGE".


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an int >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {value}")
        return value

    return parse


def positive_number(text: str) -> float:
    """An argparse ``type``: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def existing_folder(text: str) -> Path:
    """An argparse ``type``: a folder that exists."""
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"no folder at {text}")
    return Path(text)


def unavailable_device(device: torch.device) -> str | None:
    """Why this machine cannot run on ``device`` (None: it can)."""
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        return f"expected {DEVICES}, got {str(device)!r}"
    if not torch.cuda.is_available():
        return f"{device} was asked for, but torch sees no GPU on this machine; use cpu"
    if device.index is not None and device.index >= torch.cuda.device_count():
        return f"{device} was asked for, but torch sees {torch.cuda.device_count()} GPU(s)"
    return None


def torch_device(text: str) -> torch.device:
    """An argparse ``type`` for ``--device``: a device this machine has (cpu, cuda, cuda:N)."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected {DEVICES}, got {text!r}") from None
    reason = unavailable_device(device)
    if reason:
        raise argparse.ArgumentTypeError(reason)
    return device


def device_or_auto(text: str) -> str:
    """An argparse ``type`` for ``--device``: ``auto`` or a device this machine has, as given."""
    if text != "auto":
        torch_device(text)
    return text
