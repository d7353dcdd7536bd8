"""The real training entry point, run for a few steps on CPU with tiny models (litgpt / HF example-test style)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny_models import REPO_ROOT, tiny_train_args
from train.__main__ import main
from taggers.export import load_tagger
from train.trainer import PREEMPTED_EXIT_CODE


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path) if line.strip()]


def env_for_subprocess() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.parametrize("name", ["bert", "bert_extras", "bilstm"])
def test_run_folder_is_complete(tiny_exports, name):
    run = tiny_exports[name]
    for rel in ("config.toml", "train_log.jsonl", "metrics.json", "predictions/valid.jsonl",
                "predictions/test.jsonl", "export/ner_config.json", "export/tokenizer.json", "checkpoints/latest"):
        assert (run / rel).exists(), rel
    log = read_jsonl(run / "train_log.jsonl")
    steps = [r for r in log if r["event"] == "step"]
    evals = [r for r in log if r["event"] == "eval"]
    assert steps and evals
    assert all(r["loss"] > 0 and r["tokens_per_s"] > 0 and r["lr"] >= 0 for r in steps)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == evals[-1]["step"] == steps[-1]["step"]
    for fold, n in (("valid", 40), ("test", 40)):
        preds = read_jsonl(run / "predictions" / f"{fold}.jsonl")
        assert len(preds) == n == metrics[fold]["num_sentences"]
        assert all(len(p["pred"]) == len(p["tokens"]) == len(p["gold"]) for p in preds)
        assert 0.0 <= metrics[fold]["f1"] <= 1.0
    # the best export's validation F1 is the best F1 seen in the log
    assert metrics["valid"]["f1"] == pytest.approx(max(r["f1"] for r in evals))
    meta = json.loads((run / "export" / "ner_config.json").read_text())
    assert meta["model_type"] == ("bilstm" if name == "bilstm" else "bert")
    assert meta["labels"] == metrics["labels"]
    assert meta["hf_compatible"] is (name == "bert")


def test_training_reduces_loss(tiny_exports):
    steps = [r for r in read_jsonl(tiny_exports["bilstm"] / "train_log.jsonl") if r["event"] == "step"]
    first_loss = steps[0]["loss"]
    assert steps[-1]["loss"] < first_loss


def test_packed_bf16_training(tmp_path, tiny_bert_dir, tiny_data_json):
    """Document packing and bf16 autocast on the CPU, together: the loss goes down, every valid/test word gets a
    prediction (the run would stop on a word without one), and the export keeps its packing size."""
    out = tmp_path / "packed"
    assert main(tiny_train_args(tiny_data_json, tiny_bert_dir, out, "model.pack_pieces=64",
                                'train.precision="bf16"')) == 0
    steps = [r for r in read_jsonl(out / "train_log.jsonl") if r["event"] == "step"]
    assert steps[-1]["loss"] < steps[0]["loss"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["precision"] == "bf16"
    for fold in ("valid", "test"):
        preds = read_jsonl(out / "predictions" / f"{fold}.jsonl")
        assert len(preds) == metrics[fold]["num_sentences"] == 40
        assert all(len(p["pred"]) == len(p["tokens"]) for p in preds)
    meta = json.loads((out / "export" / "ner_config.json").read_text())
    assert meta["pack_pieces"] == 64
    model, windower = load_tagger(str(out / "export"))
    assert windower.pack_pieces == 64


def _batch_for(encoder, sentences):
    from common.batching import collate_windows
    from common.data import Sentence

    windows = encoder.windows([Sentence(t, None, None, i) for i, t in enumerate(sentences)], with_labels=False)
    return windows, collate_windows(windows, encoder.pad_id)


def test_bert_export_loads_in_hugging_face(tiny_exports):
    from transformers import AutoModelForTokenClassification

    export = tiny_exports["bert"] / "export"
    model, encoder = load_tagger(str(export))
    hf = AutoModelForTokenClassification.from_pretrained(str(export)).eval()
    assert [hf.config.id2label[i] for i in range(len(encoder.labels))] == encoder.labels
    _, batch = _batch_for(encoder, [["Peter", "Blackburn", "visited", "Brussels", "."], ["EU", "rejects", "it"]])
    with torch.no_grad():
        ours = model(batch)["logits"]
        theirs = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    mask = batch["attention_mask"].bool()
    assert torch.equal(model.decode(batch, {"logits": ours})[0][mask], theirs.argmax(-1)[mask])


def test_extras_export_uses_own_loader(tiny_exports):
    meta = json.loads((tiny_exports["bert_extras"] / "export" / "ner_config.json").read_text())
    assert meta["loader"] == "taggers.export.load_tagger" and meta["use_crf"] and meta["use_casing"]
    model, encoder = load_tagger(str(tiny_exports["bert_extras"] / "export"))
    _, batch = _batch_for(encoder, [["Peter", "Blackburn", "visited", "Brussels", "."]])
    pred, prob = model.decode(batch, model(batch))
    assert pred.shape == batch["input_ids"].shape and bool(((prob > 0) & (prob <= 1)).all())


def _train_cmd(data, encoder, out, *extra):
    return [sys.executable, "-m", "train", *tiny_train_args(data, encoder, out, *extra)]


def _step_of(checkpoint_name: str) -> int:
    """``step_00000012`` and ``step_00000012-1`` (the same step saved again) -> 12."""
    return int(checkpoint_name[5:].split("-")[0])


RESUME_ARGS = ("model.type=\"bilstm\"", "model.lstm_hidden=16", "model.lstm_layers=1", "train.epochs=3",
               "train.checkpoint_every=1", "train.log_every=1")


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted_run(tmp_path, tiny_bert_dir, tiny_data_json):
    full = tmp_path / "full"
    assert main(tiny_train_args(tiny_data_json, tiny_bert_dir, full, *RESUME_ARGS)) == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(tiny_data_json, tiny_bert_dir, killed, *RESUME_ARGS), env=env_for_subprocess(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    ckpts = killed / "checkpoints"
    while time.time() < deadline and proc.poll() is None:
        done = sorted(p.name for p in ckpts.glob("step_*") if not p.name.endswith(".tmp")) if ckpts.exists() else []
        if len(done) >= 2 and _step_of(done[-1]) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.kill()  # SIGKILL: no chance to clean up, as when a node dies
    proc.wait()
    killed_at = _step_of((ckpts / "latest").read_text().strip())
    total_steps = json.loads((full / "metrics.json").read_text())["steps"]
    assert 0 < killed_at < total_steps

    assert main(tiny_train_args(tiny_data_json, tiny_bert_dir, killed, *RESUME_ARGS) + ["--resume"]) == 0
    log = read_jsonl(killed / "train_log.jsonl")
    steps = [r["step"] for r in log if r["event"] == "step"]
    assert steps == sorted(set(steps)) and steps[-1] == total_steps  # continued, no step twice
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert a["test"]["f1"] == b["test"]["f1"] and a["valid"]["f1"] == b["valid"]["f1"]
    assert a["best_step"] == b["best_step"]
    wa, wb = load_file(full / "export" / "model.safetensors"), load_file(killed / "export" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_stop_signal_checkpoints_and_exits_3(tmp_path, tiny_bert_dir, tiny_data_json):
    out = tmp_path / "run"
    args = ("model.type=\"bilstm\"", "model.lstm_hidden=16", "model.lstm_layers=1", "train.epochs=50",
            "train.log_every=1")
    proc = subprocess.Popen(_train_cmd(tiny_data_json, tiny_bert_dir, out, *args), env=env_for_subprocess(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "train_log.jsonl").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT_CODE, err[-2000:]
    stopped_at = _step_of((out / "checkpoints" / "latest").read_text().strip())
    assert stopped_at > 0 and "stop signal received" in err


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("kind", ["bert", "bilstm"])
def test_torchrun_two_processes(tmp_path, tiny_bert_dir, tiny_data_json, kind):
    out = tmp_path / kind
    extra = ["model.type=\"bilstm\"", "model.lstm_hidden=16", "model.lstm_layers=1"] if kind == "bilstm" else []
    # fp32 (not auto, which is bf16 on CPUs with native bf16): the single-process check below scores in fp32, and
    # bf16 results of a near-random tiny model can flip with the batch layout
    extra.append('train.precision="fp32"')
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "train",
           *tiny_train_args(tiny_data_json, tiny_bert_dir, out, *extra)]
    res = subprocess.run(cmd, env=env_for_subprocess(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    # every sentence scored exactly once across the two ranks
    assert metrics["test"]["num_sentences"] == 40 and len(read_jsonl(out / "predictions" / "test.jsonl")) == 40
    # the distributed score equals a single-process scoring of the same export
    from common.data import load_folds
    from common.metrics import score_words
    from taggers.predict import predict_windows

    model, windower = load_tagger(str(out / "export"))
    test = load_folds(str(tiny_data_json))["test"]
    preds = predict_windows(model, windower.windows(test), [len(s) for s in test], torch.device("cpu"),
                            pad_id=windower.pad_id)
    scores = score_words([s.tags for s in test], [[windower.labels[i] for i in row] for row in preds.label_ids])
    assert scores["f1"] == pytest.approx(metrics["test"]["f1"])
    assert preds.token_accuracy == pytest.approx(metrics["test"]["token_accuracy"])
    # only rank 0 wrote the log
    assert res.stderr.count("best model (step") == 2


# ---------------------------------------------------------------- clear errors
def _run_main_expect_error(args, capsys) -> str:
    assert main(args) == 2
    return capsys.readouterr().err


def test_missing_data_is_a_clear_error(tmp_path, tiny_bert_dir, capsys):
    err = _run_main_expect_error(tiny_train_args(tmp_path / "nope.json", tiny_bert_dir, tmp_path / "r"), capsys)
    assert "nope.json" in err and "data not found" in err


def test_missing_encoder_is_a_clear_error(tmp_path, tiny_data_json, capsys):
    err = _run_main_expect_error(tiny_train_args(tiny_data_json, tmp_path / "no_model", tmp_path / "r"), capsys)
    assert "model.encoder" in err and "no_model" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_request_without_gpu_is_a_clear_error(tmp_path, tiny_bert_dir, tiny_data_json, capsys):
    err = _run_main_expect_error(tiny_train_args(tiny_data_json, tiny_bert_dir, tmp_path / "r") + ["--device", "cuda"],
                                 capsys)
    assert "no CUDA GPU" in err


def test_resume_from_another_config_is_refused(tmp_path, tiny_bert_dir, tiny_data_json, tiny_exports, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_exports["bilstm"], run)
    args = tiny_train_args(tiny_data_json, tiny_bert_dir, run, *("model.type=\"bilstm\"", "model.lstm_hidden=32"))
    err = _run_main_expect_error(args + ["--resume"], capsys)
    assert "another model or config" in err and "model.lstm_hidden" in err


def test_export_from_another_tag_set_is_refused(tmp_path, tiny_bert_dir, tiny_exports, capsys):
    data = {fold: [{"tokens": ["Acme", "sells", "widgets"], "tags": ["B-COMPANY", "O", "B-PRODUCT"]}]
            for fold in ("train", "valid", "test")}
    path = tmp_path / "other.json"
    path.write_text(json.dumps(data))
    args = tiny_train_args(path, tiny_bert_dir, tmp_path / "r",
                           f"model.init_from={json.dumps(str(tiny_exports['bert'] / 'export'))}")
    err = _run_main_expect_error(args, capsys)
    assert "another tag set" in err and "B-COMPANY" in err


def test_bad_override_is_a_clear_error(tmp_path, tiny_data_json, capsys):
    err = _run_main_expect_error(["--data", str(tiny_data_json), "model.nope=1"], capsys)
    assert "unknown option model.nope" in err


def test_logged_losses_equal_the_per_step_reads(tmp_path, tiny_bert_dir, tiny_data_json, monkeypatch):
    """The training loss is summed on the device and read once per log row; each row's loss is still the mean
    of the steps' losses as Python summed them when every step read its loss at once, bit for bit (log rows
    every 2 steps, one across an epoch boundary)."""
    from taggers.models import TaggerBase

    seen: list[float] = []
    forward = TaggerBase.forward

    def recording_forward(self, batch):
        out = forward(self, batch)
        if self.training:
            seen.append(float(out["loss"].detach()))
        return out

    monkeypatch.setattr(TaggerBase, "forward", recording_forward)
    out = tmp_path / "run"
    assert main(tiny_train_args(tiny_data_json, tiny_bert_dir, out, "train.log_every=2")) == 0
    rows = [r for r in read_jsonl(out / "train_log.jsonl") if r["event"] == "step"]
    assert len(rows) >= 3 and rows[-1]["step"] == len(seen)
    previous = 0
    for row in rows:
        total = 0.0
        for loss in seen[previous:row["step"]]:
            total += loss
        assert row["loss"] == total / (row["step"] - previous)
        previous = row["step"]
