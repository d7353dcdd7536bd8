"""What the commands share at their edge: typed argparse flags, exit codes and one-line OS errors.

Every flag of ``ner-train``, ``ner-tag``, ``ner-report``, ``ner-evaluate`` and ``ner-main`` declares its
values with ``choices=`` or one of the types below; a bad value stops the parse with one line naming the flag
(argparse's exit code 2).  Each type carries the :class:`common.options.Allowed` it checks, so the tests
walk every flag with a value it refuses.

Exit codes (docs/failures.md): 0 done; 2 bad input (an option, a data file, an export, a folder that
cannot be used); 3 stopped by a signal after a checkpoint (``ner-train``); 4 the system refused a read or
write (no space, file too large, permission, not a directory): fix the cause and re-run the same command,
which continues.
"""

from __future__ import annotations

import argparse
import os
import re

from .options import DEVICE, Allowed

BAD_INPUT_EXIT = 2
OS_ERROR_EXIT = 4


class Parser(argparse.ArgumentParser):
    """argparse with a bad flag reported as one line (no usage block above it), exit code 2."""

    def error(self, message: str):
        self.exit(BAD_INPUT_EXIT, f"{self.prog}: error: {' '.join(message.split())}\n")


def declared(parse, allowed: Allowed | None, bad_value, name: str):
    """Attach to an argparse type what it allows and a value it refuses (walked by the tests)."""
    parse.allowed, parse.bad_value, parse.__name__ = allowed, bad_value, name
    return parse


def at_least(low: int, what: str = ""):
    """A whole number >= ``low`` (e.g. --buffer-rows 0 would otherwise never finish)."""
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}{what}, got {n}")
        return n

    return declared(parse, Allowed(at_least=low), str(low - 1), "whole number")


def device(value: str) -> str:
    """auto, cpu, cuda or cuda:N (anything else would end in torch's traceback)."""
    if not re.fullmatch(DEVICE[0], value):
        raise argparse.ArgumentTypeError(f"must be {DEVICE[1]}, got {value!r}")
    return value


def text(value: str) -> str:
    """A non-empty string: a path, a column name, a fold."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


declared(device, Allowed(matches=DEVICE), "tpu", "device")
declared(text, Allowed(nonempty=True), "", "text")


def os_error_line(e: OSError, where: str | None = None) -> str:
    """``PATH: No space left on device`` (the path the system refused, and why) for a one-line error;
    ``where`` (the command's output folder) stands in when the error names no file."""
    reason = e.strerror or (os.strerror(e.errno) if e.errno else "") or str(e) or type(e).__name__
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    if not paths and where:
        paths = [f"writing in {where}"]
    line = f"{' -> '.join(paths)}: {reason}" if paths else reason
    return " ".join(line.split())


def output_dir_problem(path: str) -> str | None:
    """Why ``path`` cannot become (or be) a folder to write in, or None; checked before any work starts.

    Nothing is created: the path, or its nearest existing parent, must be a writable folder."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            return f"{path} exists and is not a folder"
        return None if os.access(path, os.W_OK | os.X_OK) else f"{path}: permission denied (not writable)"
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{path} lies under {parent}, which is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path} cannot be created: {parent} is not writable (permission denied)"
    return None
