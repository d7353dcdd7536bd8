"""ner-tag with --input s3://... and --output s3://... against a real S3 protocol server (moto_server on
127.0.0.1): the output equals a local run's, a kill -9 in the middle and a re-run leave no row missing or twice,
and the folder's identity checks work as on a disk."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from infer.__main__ import main

REPO_ROOT = Path(__file__).resolve().parents[1]
BUCKET = "ner-tag-test"
TEXTS = (["EU rejects German call to boycott British lamb.", None, "", "   \n\t",
          "Café Zürich: José Ñúñez met Ørsted in Kraków.", "x" * 700 + " Germany"]
         + [f"Angela Merkel visited Japan {i} times with the European Commission ." for i in range(34)])

# ner-tag, killed with SIGKILL when it is about to tag a buffer after KILL_AFTER rows were tagged
from tests.test_infer import _KILLED_TAGGER  # noqa: E402 - killed inside the output stage, at a buffer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free local port, the environment that points pyarrow (and ner-tag) at it, and a
    ``pyarrow.fs.S3FileSystem`` with the test bucket."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install .[test])")
    from pyarrow import fs as pafs

    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"moto_server did not start on {endpoint}")
            time.sleep(0.2)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "NER_TAG_LOCK_DIR": str(tmp_path_factory.mktemp("locks"))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client = pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True, region="us-east-1")
    client.create_dir(BUCKET)
    yield client, env
    server.terminate()
    server.wait(timeout=30)
    log.close()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _tag(export, inputs, out, *extra) -> int:
    return main(["--model", str(export), "--input", *inputs, "--output", str(out), "--threads", "1",
                 "--no-progress", "--rows-per-part", "10", "--buffer-rows", "6", *extra])


def _keys(client, prefix: str) -> list[str]:
    from pyarrow import fs as pafs

    infos = client.get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True))
    return sorted(i.path.split("/", 1)[1] for i in infos if i.type == pafs.FileType.File)


@pytest.mark.slow
def test_s3_input_and_output_resume_after_kill(s3, tiny_exports, tmp_path, capsys):
    client, env = s3
    export = tiny_exports["bert"] / "export"
    table = pa.table({"id": list(range(len(TEXTS))), "text": pa.array(TEXTS, pa.string())})
    local_in = tmp_path / "corpus"
    local_in.mkdir()
    for name, rows in (("a.parquet", table.slice(0, 24)), ("b.parquet", table.slice(24))):
        pq.write_table(rows, local_in / name, row_group_size=8)
        pq.write_table(rows, f"{BUCKET}/corpus/{name}", filesystem=client, row_group_size=8)
    reference = tmp_path / "reference"
    assert _tag(export, [str(local_in)], reference) == 0
    want = ds.dataset(str(reference), format="parquet").to_table()

    src, out = f"s3://{BUCKET}/corpus/", f"s3://{BUCKET}/tagged/"
    # killed in the middle of the second part (after 14 rows: part 0 has 8, part 1 is half written)
    proc_env = {**os.environ, **env, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "KILL_AFTER": "14",
                "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", _KILLED_TAGGER, "--model", str(export), "--input", src, "--output", out,
                        "--threads", "1", "--no-progress", "--rows-per-part", "10", "--buffer-rows", "6"],
                       cwd=REPO_ROOT, env=proc_env, capture_output=True, text=True, timeout=180)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    keys = _keys(client, "tagged")
    assert "tagged/part-000000.parquet" in keys and "tagged/_manifest/part-000000.json" in keys
    assert not [k for k in keys if "part-000001" in k]  # the torn part left nothing visible
    run = json.loads(client.open_input_stream(f"{BUCKET}/tagged/_run.json").read())
    assert [f["path"] for f in run["input"]["files"]] == [f"{src}a.parquet", f"{src}b.parquet"]

    assert _tag(export, [src], out) == 0  # the re-run does the rest
    summary = json.loads(client.open_input_stream(f"{BUCKET}/tagged/_summary.json").read())
    assert summary["this_run"]["rows"] == len(TEXTS) - 8 and summary["total"]["complete"]
    assert summary["output"] == out.rstrip("/")
    got = ds.dataset(f"{BUCKET}/tagged", filesystem=client, format="parquet").to_table()
    assert got.column("id").to_pylist() == list(range(len(TEXTS)))  # every row once, in input order
    assert got.equals(want)
    assert not [k for k in _keys(client, "tagged") if "/." in k]  # no temporary objects left

    # a third run has nothing to do; another model is refused and changes nothing
    assert _tag(export, [src], out) == 0
    assert json.loads(client.open_input_stream(f"{BUCKET}/tagged/_summary.json").read())["this_run"]["rows"] == 0
    before = _keys(client, "tagged")
    capsys.readouterr()
    assert _tag(tiny_exports["bilstm"] / "export", [src], out) == 2
    assert "another model" in capsys.readouterr().err
    assert _keys(client, "tagged") == before
    # globs in the bucket, and a prefix with nothing in it
    assert _tag(export, [f"s3://{BUCKET}/corpus/*.parquet"], f"s3://{BUCKET}/tagged-glob") == 0
    assert ds.dataset(f"{BUCKET}/tagged-glob", filesystem=client, format="parquet").to_table().equals(want)
    assert _tag(export, [f"s3://{BUCKET}/nothing/"], f"s3://{BUCKET}/tagged-none") == 2
    assert "s3://ner-tag-test/nothing/: no such object, prefix or matching glob" in capsys.readouterr().err
