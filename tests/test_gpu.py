"""Checks that need a CUDA GPU (``pytest -m gpu``; ``make gpu-check`` runs them): NCCL process group, bf16
autocast, the batch tagger's pinned-memory path against CPU fp32, and ner-tag's message on CUDA out-of-memory.

Every test is marked ``gpu`` and skipped where ``torch.cuda.is_available()`` is false.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# ------------------------------------------------------------------ NCCL
NCCL_WORKER = textwrap.dedent("""
    import torch
    import torch.distributed as dist

    from common import distributed

    info = distributed.setup("cuda")
    if not dist.is_initialized():  # one process: setup() makes no group; NCCL is checked all the same
        dist.init_process_group("nccl")
    assert dist.get_backend() == "nccl", dist.get_backend()
    assert info.device.type == "cuda" and torch.cuda.current_device() == info.device.index
    n = dist.get_world_size()
    t = torch.tensor([float(info.rank + 1)], device=info.device)
    dist.all_reduce(t)
    assert t.item() == n * (n + 1) / 2, t.item()
    summed = distributed.all_reduce_sum([1, info.rank], info)  # the project's helper (no-op with one process)
    assert summed == ([float(n), float(n * (n - 1) / 2)] if info.distributed else [1.0, 0.0]), summed
    print(f"NCCL-OK rank {info.rank}/{n} {info.device} all_reduce={t.item()}", flush=True)
    distributed.teardown(True)
""")


def test_nccl_process_group_and_all_reduce(tmp_path):
    nproc = min(2, torch.cuda.device_count())
    worker = tmp_path / "nccl_worker.py"
    worker.write_text(NCCL_WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(worker)]
    r = subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert out.count("NCCL-OK") == nproc, out[-4000:]


# ------------------------------------------------------------------ bf16
def test_bf16_autocast(tiny_bert_dir):
    from transformers import BertModel

    from taggers.models import BertTagger
    from taggers.precision import autocast, resolve_precision

    device = torch.device("cuda")
    if torch.cuda.get_device_capability(device) < (8, 0):
        assert resolve_precision("auto", device) == "fp16"
        pytest.skip(f"{torch.cuda.get_device_name(device)} is older than Ampere: no native bf16")
    assert resolve_precision("auto", device) == "bf16"
    assert resolve_precision("auto", device, training=True) == "bf16"
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    model = BertTagger(labels, BertModel.from_pretrained(tiny_bert_dir), use_casing=True).to(device).eval()
    dtypes = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    batch = {"input_ids": torch.randint(1000, 2000, (3, 17), device=device),
             "attention_mask": torch.ones(3, 17, dtype=torch.long, device=device),
             "casing": torch.ones(3, 17, dtype=torch.long, device=device),
             "scored": torch.ones(3, 17, dtype=torch.bool, device=device)}
    with torch.no_grad(), autocast(device, "bf16"):
        outputs = model(batch)
    for h in hooks:
        h.remove()
    assert len(dtypes) >= 2 * 6 + 1  # q, k, v, out, ffn in, ffn out per layer, and the classifier
    assert set(dtypes) == {torch.bfloat16}, dtypes
    assert outputs["logits"].dtype == torch.bfloat16
    pred, prob = model.decode(batch, outputs)
    assert pred.shape == (3, 17) and prob.dtype == torch.float32 and bool(((prob > 0) & (prob <= 1)).all())
    with torch.no_grad():  # outside autocast: fp32 again
        assert model(batch)["logits"].dtype == torch.float32


# ------------------------------------------------------------------ the batch tagger on a GPU
TEXTS = [
    "EU rejects German call to boycott British lamb.",
    "Peter Blackburn visited New York on Monday; Angela Merkel met Reuters in BRUSSELS.",
    "Café Zürich: José Ñúñez met Ørsted in Kraków and São Paulo.",
    None, "", "   ",
    " ".join(f"Peter Blackburn said in Brussels that the European Commission met {i} times." for i in range(40)),
] + [f"Angela Merkel visited Japan {i} times with the European Commission ." for i in range(30)]


@pytest.fixture
def exact_fp32():
    """fp32 matrix products on the GPU without TF32, so that they compare with the CPU's."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("name", ["bert", "bert_extras", "bilstm", "hf_folder"])
def test_pinned_batches_match_cpu_fp32(tiny_exports, exact_fp32, tmp_path, name):
    """hf_folder: the bert export without its ner_config.json, i.e. a plain Hugging Face model (taggers/hf.py)."""
    import shutil

    from infer.tagger import TextTagger

    if name == "hf_folder":
        export = str(tmp_path / "hf")
        shutil.copytree(tiny_exports["bert"] / "export", export)
        os.remove(os.path.join(export, "ner_config.json"))
    else:
        export = str(tiny_exports[name] / "export")
    cpu = TextTagger.from_export(export, "cpu", precision="fp32")
    gpu = TextTagger.from_export(export, "cuda", precision="fp32")
    assert gpu.pin and not cpu.pin
    assert next(gpu.model.parameters()).is_cuda
    prep = gpu.prepare(TEXTS)
    assert prep.batches and all(t.is_pinned() for b in prep.batches for t in b.values())
    ids_gpu, probs_gpu = gpu.predict(prep)
    ids_cpu, probs_cpu = cpu.predict(cpu.prepare(TEXTS))
    assert ids_gpu.shape == ids_cpu.shape
    same = ids_gpu == ids_cpu
    assert same.mean() >= 0.995, f"{(~same).sum()} of {same.size} words differ"  # near-ties may flip
    np.testing.assert_allclose(probs_gpu[same], probs_cpu[same], atol=2e-4)
    if same.all():  # then the spans are the same, their scores within the tolerance
        for a, b in zip(gpu.tag(TEXTS), cpu.tag(TEXTS)):
            assert [(e["start"], e["end"], e["label"]) for e in a] == [(e["start"], e["end"], e["label"]) for e in b]
            assert [e["score"] for e in a] == pytest.approx([e["score"] for e in b], abs=2e-4)


def test_auto_precision_tags_in_bf16(tiny_exports):
    from infer.tagger import TextTagger

    if not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("no native bf16 on this GPU")
    tagger = TextTagger.from_export(str(tiny_exports["bert_extras"] / "export"), "cuda")
    assert tagger.precision == "bf16"
    assert next(tagger.model.encoder.parameters()).dtype == torch.bfloat16
    assert tagger.model.crf.transitions.dtype == torch.float32  # the CRF stays fp32
    fp32 = TextTagger.from_export(str(tiny_exports["bert_extras"] / "export"), "cuda", precision="fp32")
    got, ref = tagger.tag(TEXTS), fp32.tag(TEXTS)
    spans = [{(e["start"], e["end"], e["label"]) for e in row} for row in got]
    ref_spans = [{(e["start"], e["end"], e["label"]) for e in row} for row in ref]
    inter = sum(len(a & b) for a, b in zip(spans, ref_spans))
    total = sum(len(a) + len(b) for a, b in zip(spans, ref_spans))
    assert total == 0 or 2 * inter / total >= 0.8  # a tiny, barely trained model: near-ties flip in bf16


# ------------------------------------------------------------------ CUDA out of memory
OOM_LIMIT_BYTES = 48 << 20
"""The GPU memory the ner-tag process may allocate: the tiny model fits, one batch of the corpus does not."""

OOM_RUNNER = ("import sys, torch; torch.cuda.set_per_process_memory_fraction(float(sys.argv[1])); "
              "from infer.__main__ import main; sys.exit(main(sys.argv[2:]))")


def _error_lines(stderr: str) -> list[str]:
    """stderr without Python warnings (``file:line: XWarning: ...`` and their indented source lines)."""
    return [line for line in stderr.splitlines()
            if line.strip() and "Warning" not in line and not line[:1].isspace()]


@pytest.fixture(scope="module")
def oom_run(tiny_exports, tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = tmp_path_factory.mktemp("oom")
    words = " ".join(f"Peter Blackburn met the European Commission in Brussels {i} times ." for i in range(10))
    source = tmp / "big.parquet"
    pq.write_table(pa.table({"text": [words] * 4000}), source)  # ~450,000 pieces in one batch
    fraction = OOM_LIMIT_BYTES / torch.cuda.get_device_properties(0).total_memory
    cmd = [sys.executable, "-c", OOM_RUNNER, repr(fraction), "--model", str(tiny_exports["bert"] / "export"),
           "--input", str(source), "--output", str(tmp / "out"), "--device", "cuda", "--no-progress",
           "--log-level", "ERROR", "--batch-tokens", "100000000", "--buffer-rows", "100000",
           "--buffer-chars", "100000000", "--threads", "4"]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=600)


def test_cuda_oom_is_one_line(oom_run):
    assert oom_run.returncode == 2, oom_run.stderr[-4000:]
    assert "Traceback" not in oom_run.stderr, oom_run.stderr[-4000:]
    lines = _error_lines(oom_run.stderr)
    assert len(lines) == 1 and lines[0].startswith("ner-tag: error:"), oom_run.stderr[-4000:]
    assert "out of memory" in lines[0].lower()


def test_cuda_oom_suggests_smaller_batches(oom_run):
    lines = _error_lines(oom_run.stderr)
    assert len(lines) == 1 and "--batch-tokens" in lines[0], oom_run.stderr[-4000:]
