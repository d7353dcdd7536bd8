"""File writes that never leave a half-written file, and the project's readers of JSON lines and TOML.

Every file a run or a tagging job writes goes through :func:`atomic_write`:
the content goes to a temporary file beside the target (its name unique per
host and process, so nodes sharing a file system never collide) and is
renamed over the target when complete.  A kill at any moment leaves either
the old file or the new one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import sys
from typing import Iterable, Iterator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TOMLDecodeError = tomllib.TOMLDecodeError


def temp_name(path: str) -> str:
    """A temporary name beside ``path``, unique per host and process."""
    return f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Any failure of the block that writes ``path`` to disk comes out as an ``OSError`` naming ``path``.

    A write refused by the system (no space, file too large) raises ``OSError`` without the file's name,
    and torch and safetensors raise their own kinds; the command's edge prints it as one line.
    """
    try:
        yield
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, _reason(e), path) from None
        raise
    except Exception as e:  # noqa: BLE001 - torch's RuntimeError, safetensors' SafetensorError
        message = " ".join(str(e).split())
        code = re.search(r"os error (\d+)|errno (\d+)", message)
        if code:
            number = int(code.group(1) or code.group(2))
            raise OSError(number, os.strerror(number), path) from None
        if "inline_container" in message or "PytorchStreamWriter" in message:
            raise OSError(errno.EIO, f"write failed, the disk may be full or the file size limited ({message})",
                          path) from None
        raise


def _reason(e: OSError) -> str:
    return e.strerror or (os.strerror(e.errno) if e.errno else str(e))


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator:
    """Open a temporary file for writing; rename it to ``path`` when the block ends without error."""
    tmp = temp_name(path)
    try:
        with writing(path), open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it visible (a crash keeps the old file)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_json(path: str, obj, indent: int | None = 2) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=indent)


def write_jsonl(path: str, rows: Iterable[dict]) -> None:
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def read_jsonl(path: str) -> list[dict]:
    """Rows of a JSON-lines file; a bad line raises ``ValueError`` naming the file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {lineno}: not valid JSON: {e}") from None
    return rows


def read_toml(path: str) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def parse_toml_value(text: str):
    """``3e-5`` -> 3e-05, ``true`` -> True, ``[1, 2]`` -> [1, 2]; anything else stays a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except TOMLDecodeError:
        return text
