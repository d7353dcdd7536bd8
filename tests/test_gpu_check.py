"""bench/gpu_check.py's results file, from stages made up here (the kit itself needs a GPU; CI has none)."""

from __future__ import annotations

import argparse
import sys

from tests.tiny_models import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))

import gpu_check  # noqa: E402


def _stage(name, title, rc=0, results=None, output=""):
    s = gpu_check.Stage(name, title, ["python", "x.py"])
    s.rc, s.seconds, s.output, s.log = rc, 12.0, output, f"/logs/{name}.log"
    s.gpu = {"gpu0": {"samples": 3, "util_mean_pct": 40.0, "util_max_pct": 90.0, "mem_used_max_mib": 1234.0}}
    s.results = results or {}
    return s


def test_results_file_has_every_stage_and_failures(tmp_path):
    machine = {"date": "2026-11-26T00:00:00", "host": "h", "python": "3.12", "torch": "2.11", "cuda": "13.0",
               "cudnn": 91900, "cpus": 16, "nccl": "2.28.9", "driver": "580", "transformers": "5.17",
               "commit": "abc", "gpus": [{"index": 0, "name": "NVIDIA H200", "capability": "9.0",
                                          "memory_gib": 139.8, "bf16": True}]}
    stages = [
        _stage("tests", "a. tests marked gpu", results={"summary": "9 passed", "outcomes": ["PASSED t::a"]}),
        _stage("train_bert_conll03", "b. bf16 training", results={"steps": 100, "train_wall_s": 11.1,
                                                                  "train_tokens_per_s": 8998, "valid_f1": 80.06,
                                                                  "test_f1": 78.63, "peak_gpu_mib": 594.0}),
        _stage("scale", "d. ner-tag at scale", results={"table": "| model only | x |\n|---|---|"}),
        _stage("bench", "c. tagging benchmark", rc=1, output="Traceback...\nRuntimeError: boom"),
    ]
    out = tmp_path / "results_gpu.md"
    gpu_check.write_results(out, machine, stages, argparse.Namespace(steps=100))
    text = out.read_text()
    assert "NVIDIA H200 (compute capability 9.0, 139.8 GiB, native bf16: yes)" in text
    assert "| a. tests marked gpu | ok | 12 s | gpu0: 40% / 90% | gpu0: 1,234 MiB |" in text
    assert "Result: 9 passed" in text and "| 100 | 11.1 s | 8,998 | 80.06 | 78.63 | 594 MiB |" in text
    assert "| model only | x |" in text
    assert "| c. tagging benchmark | **FAILED** (exit 1) |" in text and "RuntimeError: boom" in text
