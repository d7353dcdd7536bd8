"""Paths of ner-tag's input and output on the local disk or in an object store (``s3://``, ``gs://``, ...).

A path with a scheme (``s3://bucket/corpus/``) goes through pyarrow's file systems
(``pyarrow.fs.FileSystem.from_uri``: credentials, region and endpoint from the usual environment, e.g.
``AWS_ENDPOINT_URL`` for an S3-compatible server); any other path goes to ``os`` exactly as before, so local
folders keep their behaviour (atomic renames, ``flock`` claims) bit for bit.

What an object store gives instead:

* **atomic parts**: an object appears only when its upload completes, and a killed upload leaves nothing
  visible.  A part is streamed to a temporary key (a name starting with ``.``, which readers skip) and
  moved to its final key (a server-side copy) when complete, then its manifest entry is written as one
  object; a re-run skips parts whose object and entry both exist, as on a disk;
* **no locks**: claims and the folder lock are ``flock`` files in a folder on the local disk named after the
  output URI (:func:`lock_dir`, under ``NER_TAG_LOCK_DIR`` or the temp folder), so processes *on one machine*
  (torchrun ranks, re-runs) share the parts as they do on a shared disk.  Processes on different machines
  must take disjoint shards (SLURM array tasks, ``--num-shards/--shard-index``); if two of them tag the
  same part anyway, both write the same keys, so the output still holds each row once (the work is done
  twice).
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob as _glob
import hashlib
import json
import os
import posixpath
import re
import shutil
import tempfile

from common.io import write_json as _write_json_local

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_FILESYSTEMS: dict[str, object] = {}


def is_uri(path) -> bool:
    """``s3://...``, ``gs://...`` and the like; not a local path (nor ``file://``, which os functions then refuse:
    pyarrow's local file system writes in place, without the renames that keep parts whole)."""
    return isinstance(path, str) and bool(_SCHEME.match(path)) and not path.startswith("file://")


def resolve(uri: str):
    """``(pyarrow file system, path inside it)``; one file system per scheme and bucket."""
    from pyarrow import fs as pafs

    scheme, rest = uri.split("://", 1)
    bucket = rest.split("/", 1)[0]
    key = f"{scheme}://{bucket}"
    if key not in _FILESYSTEMS:
        _FILESYSTEMS[key] = pafs.FileSystem.from_uri(key + "/")[0]
    return _FILESYSTEMS[key], rest.rstrip("/")


def _uri(uri: str, path: str) -> str:
    """``path`` inside ``uri``'s file system as a URI of the same scheme."""
    return f"{uri.split('://', 1)[0]}://{path}"


def uri_of(path: str, filesystem) -> str:
    """A dataset fragment's path as ner-tag names it: local paths as they are, others as ``scheme://path``."""
    from pyarrow import fs as pafs

    if filesystem is None or isinstance(filesystem, pafs.LocalFileSystem):
        return path
    scheme = {"gcs": "gs"}.get(filesystem.type_name, filesystem.type_name)
    return f"{scheme}://{path}"


def join(base: str, *names: str) -> str:
    return posixpath.join(base, *names) if is_uri(base) else os.path.join(base, *names)


def abspath(path: str) -> str:
    return path.rstrip("/") if is_uri(path) else os.path.abspath(path)


def _info(uri: str):
    fs, path = resolve(uri)
    return fs.get_file_info(path)


def exists(path: str) -> bool:
    if not is_uri(path):
        return os.path.exists(path)
    from pyarrow import fs as pafs

    return _info(path).type != pafs.FileType.NotFound


def isdir(path: str) -> bool:
    if not is_uri(path):
        return os.path.isdir(path)
    from pyarrow import fs as pafs

    return _info(path).type == pafs.FileType.Directory


def getsize(path: str) -> int:
    return _info(path).size if is_uri(path) else os.path.getsize(path)


def stat_key(path: str) -> tuple[int, int]:
    """(size, modification time in ns) of a file or object: what changes when it is rewritten."""
    if not is_uri(path):
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    info = _info(path)
    return info.size, info.mtime_ns or 0


def listdir(path: str) -> list[str]:
    if not is_uri(path):
        return os.listdir(path)
    from pyarrow import fs as pafs

    fs, p = resolve(path)
    return [posixpath.basename(i.path) for i in fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))]


def glob(pattern: str) -> list[str]:
    """``glob.glob``; in an object store the keys under the pattern's fixed prefix that match it."""
    if not is_uri(pattern):
        return _glob.glob(pattern, recursive=True)
    from pyarrow import fs as pafs

    fs, p = resolve(pattern)
    parts = p.split("/")
    fixed = next((i for i, s in enumerate(parts) if any(c in s for c in "*?[")), len(parts))
    base = "/".join(parts[:max(fixed, 1)])
    if fixed == len(parts):
        return [pattern] if fs.get_file_info(p).type == pafs.FileType.File else []
    recursive = fixed < len(parts) - 1
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True, recursive=recursive))
    return sorted(_uri(pattern, i.path) for i in infos
                  if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.path, p))


def makedirs(path: str, exist_ok: bool = False) -> None:
    if not is_uri(path):  # an object store has no folders: keys are made with their objects
        os.makedirs(path, exist_ok=exist_ok)


def remove(path: str) -> None:
    if not is_uri(path):
        return os.remove(path)
    fs, p = resolve(path)
    fs.delete_file(p)


def rmtree(path: str) -> None:
    if not is_uri(path):
        return shutil.rmtree(path)
    fs, p = resolve(path)
    fs.delete_dir(p)


def read_json(path: str):
    """The JSON in ``path`` (OSError when it cannot be read, ValueError when it is not JSON)."""
    if not is_uri(path):
        with open(path) as f:
            return json.load(f)
    fs, p = resolve(path)
    with fs.open_input_stream(p) as f:
        return json.loads(f.read())


def write_json(path: str, obj, indent: int | None = 2) -> None:
    """Written whole or not at all: a temporary file renamed over ``path``, or one object."""
    if not is_uri(path):
        return _write_json_local(path, obj, indent)
    data = json.dumps(obj, indent=indent).encode()
    fs, p = resolve(path)
    with fs.open_output_stream(p) as f:  # the bytes are all here: the upload is complete or absent
        f.write(data)


def parquet_writer(path: str, schema):
    import pyarrow.parquet as pq

    if not is_uri(path):
        return pq.ParquetWriter(path, schema)
    fs, p = resolve(path)
    return pq.ParquetWriter(p, schema, filesystem=fs)


def publish(tmp: str, final: str) -> None:
    """Make the finished temporary file ``tmp`` visible as ``final`` at once: fsync and rename on a disk; a
    server-side copy in an object store (``final`` appears complete or not at all)."""
    if not is_uri(tmp):
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        return
    fs, p = resolve(tmp)
    fs.move(p, resolve(final)[1])


def check_writable(out_dir: str) -> None:
    """Raise OSError now, not when the first part is done, if ``out_dir`` cannot be written."""
    if not is_uri(out_dir):
        tempfile.TemporaryFile(dir=out_dir).close()  # nameless where it can be: nothing left if killed
        return
    from common.io import temp_name

    probe = temp_name(join(out_dir, ".write-check"))
    fs, p = resolve(probe)
    with fs.open_output_stream(p) as f:
        f.write(b"")
    with contextlib.suppress(OSError):
        fs.delete_file(p)


def lock_dir(out_dir: str) -> str:
    """Where the folder lock and the part claims of ``out_dir`` live: the folder itself on a disk; for an object
    store a local folder named after the URI (claims then hold among the processes of one machine)."""
    if not is_uri(out_dir):
        return out_dir
    root = os.environ.get("NER_TAG_LOCK_DIR") or tempfile.gettempdir()
    digest = hashlib.sha256(abspath(out_dir).encode()).hexdigest()[:16]
    return os.path.join(root, f"ner-tag-locks-{digest}")


def parquet_dataset(spec: str):
    """A ``pyarrow.dataset`` of the object, prefix (hive partitions become columns) or glob ``spec``; ``None``
    when nothing matches."""
    import pyarrow.dataset as ds
    from pyarrow import fs as pafs

    fs, p = resolve(spec)
    kind = fs.get_file_info(p).type
    if kind == pafs.FileType.Directory:
        return ds.dataset(p, filesystem=fs, format="parquet", partitioning="hive")
    if kind == pafs.FileType.File:
        return ds.dataset([p], filesystem=fs, format="parquet")
    matches = [resolve(m)[1] for m in glob(spec)]
    return ds.dataset(matches, filesystem=fs, format="parquet") if matches else None
