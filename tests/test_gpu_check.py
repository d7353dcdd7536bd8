"""What the GPU scripts in bench/ write, from inputs made up here (the scripts themselves need a GPU; CI has none):
bench/gpu_check.py's results file, the GPU sampler they share (bench/gpu_common.py) and the table of
bench/device/measure.py."""

from __future__ import annotations

import argparse
import sys

from tests.tiny_models import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))
sys.path.insert(0, str(REPO_ROOT / "bench" / "device"))

import gpu_check  # noqa: E402
import measure_runs  # noqa: E402
from gpu_common import GpuSampler  # noqa: E402


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


def test_gpu_sampler_summarises_per_gpu_and_skips_unreadable_lines():
    sampler = GpuSampler(enabled=False)
    assert "note" in sampler.summary() and sampler.util_mean_max() == (None, None)
    for line in ["0, 10, 100", "1, 50, 7000", "0, 30, 300", "0, [N/A], 5", "garbage"]:
        sampler.add_line(line)
    assert sampler.summary() == {
        "gpu0": {"samples": 2, "util_mean_pct": 20.0, "util_max_pct": 30.0, "mem_used_max_mib": 300.0},
        "gpu1": {"samples": 1, "util_mean_pct": 50.0, "util_max_pct": 50.0, "mem_used_max_mib": 7000.0}}
    assert sampler.util_mean_max() == (30.0, 50.0)


def test_measure_table_lists_runs_stages_and_what_was_skipped():
    run = {"end_to_end_words_per_s": 1000, "tag_words_per_s": 4000.0, "gpu_busy_mean_pct": 61.0,
           "gpu_busy_max_pct": 99.0, "first_batch_s": 1.25, "wall_s": 3.0, "stages_s": {"host: read Parquet": 0.5}}
    res = {"device": "GPU X", "commit": "abc", "date": "d", "peak_tflops": 900.0, "skipped": ["large: budget"],
           "tag": {"plain_forward_words_per_s": 5000,
                   "bert": {"plain_corpus": run, "reps": 3, "corpus_nx": {**run, "wall_s": 9.0}},
                   "bilstm": {"plain_corpus": {"error": "exit 1: boom"}}},
           "train": {"gpu_recipe": {"tokens_per_s": 50, "plain_step_tokens_per_s": 100, "test_f1": 90.5,
                                    "command_s": 60.0}, "large": {}}}
    text = measure_runs.table(res)
    assert "| plain forward (model alone, 512 x 64 random pieces) | 5,000 | | | | |" in text
    assert "| bert, news | 1,000 | 4,000 | 61% / 99% | 1.2 s | 3.0 s |" in text
    assert "| bert, news x3 | 1,000 | 4,000 | 61% / 99% | 1.2 s | 9.0 s |" in text
    assert "bilstm, news" not in text  # a failed run has no row
    assert "| host: read Parquet | 0.50 | 0.50 | - | - |" in text
    assert "| GPU recipe (MiniLM-L6 shape) | 50 | 100 | 50% | | 90.50 | 60.0 s |" in text
    assert "| BERT-large shape, random weights | - | - | - | - (plain -) | | |" in text
    assert text.endswith("skipped or failed: large: budget")
