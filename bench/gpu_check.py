"""The GPU check kit: ``make gpu-check`` (or ``python bench/gpu_check.py``) on a machine with a CUDA GPU.

Stages, each in its own process, each failure recorded and the next stage run all the same:

a. the tests marked ``gpu`` (``pytest -m gpu``: NCCL, bf16 autocast, pinned batches vs CPU, CUDA OOM message);
b. a short bf16 training run of each recipe (``train/configs/{bilstm,bert}_conll03.toml``,
   ``train.max_steps=100 train.precision="bf16"``) on ``--data`` (default ``../shared/data/conll03-iob-pos.json``):
   wall time, training tokens/s, valid/test F1 of the (barely trained) model, peak GPU memory;
c. the tagging benchmark ``bench/bench_infer.py --device cuda``: words/s and pieces/s of ner-tag (fp32 and bf16)
   against the Hugging Face pipeline on the same GPU, span agreement, peak GPU memory per run; the model is
   ``--bench-model`` or a MiniLM export trained for a few steps (``bench_infer.py --make-export``);
d. ner-tag at scale (``bench/bench_gpu_scale.py``, first 100,000 news sentences): end-to-end words/s with 0 and 4
   host workers and two batch sizes, against the model alone on the same GPU.

During every stage ``nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv -lms 500`` samples
the GPUs in the background (mean / max utilisation, max memory used).  The results, with the commands, the
device, the driver and the torch / CUDA / cuDNN / NCCL versions, go to ``bench/results_gpu.md`` (``--results``);
each stage's full output to ``--work``/logs.

Without a GPU it says so in one line and exits 0, writing nothing.  Exit status: 0 when every stage passed,
1 when one failed (its failure is in the results file), 2 when torch cannot use a GPU that nvidia-smi sees.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gpu_check_results import write_results  # noqa: F401 (the results file; imported from here by tests)
from gpu_common import DISTRIBUTED_VARS, GpuSampler, git_commit, nvidia_smi, repo_env

REPO = Path(__file__).resolve().parents[1]
PEAK_MARK = "GPU_CHECK_PEAK_GPU_MIB="
SHARED = REPO.parent / "shared"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED / "data/conll03-iob-pos.json"),
                   help="labelled data for the training runs (default: %(default)s)")
    p.add_argument("--steps", type=int, default=100, help="training steps per recipe (default: 100)")
    p.add_argument("--recipes", default="bilstm_conll03,bert_conll03",
                   help="train/configs/NAME.toml recipes, comma-separated (default: %(default)s)")
    p.add_argument("--bench-model", help="model for the tagging benchmark: an HF-compatible export or a Hugging "
                                         "Face token-classification folder (default: train a MiniLM export)")
    p.add_argument("--corpus", action="append", metavar="PATH[:ROWS]",
                   help="benchmark corpora (repeatable; default: news_sentences:20000 and reuters21578:2000)")
    p.add_argument("--bench-precision", default="fp32,bf16", help="ner-tag precisions to time (default: %(default)s)")
    p.add_argument("--work", default=str(REPO / "runs" / "gpu_check"),
                   help="training runs, benchmark model and logs (default: %(default)s)")
    p.add_argument("--results", default=str(REPO / "bench" / "results_gpu.md"), help="results file (markdown)")
    p.add_argument("--scale-corpus", default=str(SHARED / "corpus/news_sentences.parquet") + ":100000",
                   metavar="PATH[:ROWS]", help="sample of the scale stage (default: %(default)s)")
    p.add_argument("--skip", default="", help="stages to skip, comma-separated: tests,train,bench,scale")
    p.add_argument("--stage-timeout", type=int, default=3600, help="seconds per stage process (default: 3600)")
    p.add_argument("--child", nargs=argparse.REMAINDER,
                   help=argparse.SUPPRESS)  # internal: run a module's main() and print the peak GPU memory
    return p.parse_args(argv)


# ------------------------------------------------------------------ child: a command's main() plus its peak GPU memory
def run_child(argv: list[str]) -> int:
    """``--child MODULE ARGS...``: ``MODULE.main(ARGS)`` in this process, then the peak GPU memory it allocated."""
    import importlib

    module, args = argv[0], argv[1:]
    sys.path.insert(0, str(REPO))
    code = 1
    try:
        code = importlib.import_module(module).main(args)
    finally:
        try:
            import torch

            if torch.cuda.is_available() and torch.cuda.is_initialized():
                print(f"{PEAK_MARK}{torch.cuda.max_memory_allocated() / 2**20:.1f}", flush=True)
        except Exception:  # noqa: BLE001 - the stage's own result matters more
            pass
    return int(code or 0)


# ------------------------------------------------------------------ GPU detection and description
def find_gpu():
    """(torch, None) when torch can use a GPU; otherwise (None, exit status) after saying why in one line."""
    try:
        import torch
    except ImportError as e:
        print(f"gpu-check: torch is not importable ({e}); run `make setup` first", file=sys.stderr)
        return None, 2
    if torch.cuda.is_available():
        return torch, None
    if "GPU" in (nvidia_smi("-L") or ""):
        print(f"gpu-check: nvidia-smi sees a GPU but torch {torch.__version__} (CUDA {torch.version.cuda}) "
              "cannot use it: install a CUDA build of torch; nothing written", file=sys.stderr)
        return None, 2
    print("gpu-check: no CUDA GPU on this machine (torch.cuda.is_available() is False): nothing to check, "
          "nothing written")
    return None, 0


def describe_machine(torch) -> dict:
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpus": [],
    }
    try:
        info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    except Exception:  # noqa: BLE001
        info["nccl"] = None
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        info["gpus"].append({"index": i, "name": props.name, "capability": f"{props.major}.{props.minor}",
                             "memory_gib": round(props.total_memory / 2**30, 1),
                             "bf16": props.major >= 8})
    smi = nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader")
    info["driver"] = smi.splitlines()[0].strip() if smi else None
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    info["commit"] = git_commit(REPO, mark_dirty=True)
    return info


# ------------------------------------------------------------------ stages
class Stage:
    def __init__(self, name: str, title: str, cmd: list[str]):
        self.name, self.title, self.cmd = name, title, cmd
        self.rc: int | None = None
        self.seconds = 0.0
        self.log = ""
        self.output = ""
        self.error = ""
        self.gpu: dict = {}
        self.results: dict = {}

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.error

    def command_line(self) -> str:
        return " ".join(shlex.quote(str(c)) for c in self.cmd)


def run_stage(stage: Stage, logs: Path, timeout: int, env: dict) -> Stage:
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{stage.name}.log"
    stage.log = str(log_path)
    print(f"gpu-check: [{stage.name}] {stage.command_line()}", flush=True)
    t0 = time.time()
    with GpuSampler() as sampler:
        try:
            with open(log_path, "w") as log:
                stage.rc, stage.output = _stream(stage.cmd, env, log, timeout)
                if stage.rc in (-9, -15) and time.time() - t0 >= timeout:
                    stage.error = f"killed after the stage timeout of {timeout} s"
        except OSError as e:
            stage.rc, stage.error = 127, f"could not start: {e}"
    stage.seconds = time.time() - t0
    stage.gpu = sampler.summary()
    status = "ok" if stage.ok else f"FAILED (exit {stage.rc}{'; ' + stage.error if stage.error else ''})"
    print(f"gpu-check: [{stage.name}] {status} in {stage.seconds:.0f} s (log: {log_path})", flush=True)
    return stage


def _stream(cmd: list[str], env: dict, log, timeout: int) -> tuple[int, str]:
    """Runs ``cmd`` in its own process group, its output to ``log`` as it comes; the group is killed at
    ``timeout``.  -> (exit status, output)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines = []
    timer = threading.Timer(timeout, lambda: _kill_group(proc))
    timer.start()
    try:
        for line in proc.stdout:
            log.write(line)
            lines.append(line)
        rc = proc.wait()
    finally:
        timer.cancel()
    return rc, "".join(lines)


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the stage's own process group (start_new_session)
    except OSError:
        pass


def _peak(output: str) -> float | None:
    found = re.findall(re.escape(PEAK_MARK) + r"([\d.]+)", output)
    return float(found[-1]) if found else None


def parse_tests(stage: Stage) -> None:
    tail = [line for line in stage.output.splitlines() if line.strip()]
    summary = next((line.strip("= ") for line in reversed(tail) if re.search(r"\d+ (passed|failed|skipped|error)",
                                                                          line)), "")
    outcomes = [line for line in tail if re.match(r"(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", line)]
    stage.results = {"summary": summary, "outcomes": outcomes}


def parse_train(stage: Stage, run_dir: Path) -> None:
    res: dict = {"peak_gpu_mib": _peak(stage.output)}
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():
        m = json.loads(metrics_path.read_text())
        res.update(steps=m.get("steps"), train_wall_s=round(m.get("train_wall_s", 0), 1),
                   train_tokens_per_s=round(m.get("train_tokens_per_s", 0)),
                   valid_f1=round(100 * m.get("valid", {}).get("f1", 0), 2),
                   test_f1=round(100 * m.get("test", {}).get("f1", 0), 2), engine=m.get("engine"),
                   world_size=m.get("world_size"))
    elif stage.ok:
        stage.error = f"no {metrics_path}"
    stage.results = res


def parse_bench(stage: Stage, json_path: Path) -> None:
    if json_path.exists():
        stage.results = json.loads(json_path.read_text())
    elif stage.ok:
        stage.error = f"no {json_path}"


# ------------------------------------------------------------------ the four stages
@dataclass
class Kit:
    """What every stage needs: the options, the work folder, the environment of its process, this Python."""
    args: argparse.Namespace
    work: Path
    env: dict
    py: str = sys.executable

    def run(self, stage: Stage) -> Stage:
        return run_stage(stage, self.work / "logs", self.args.stage_timeout, self.env)


def stage_tests(kit: Kit) -> Stage:
    s = kit.run(Stage("tests", "a. tests marked gpu", [kit.py, "-m", "pytest", "-m", "gpu", "-rA", "-q",
                                                        "-p", "no:cacheprovider"]))
    parse_tests(s)
    if s.rc == 5:  # pytest: nothing collected
        s.error = "no test was collected"
    elif s.rc == 0 and " passed" not in s.results["summary"]:
        s.error = "no gpu test ran (all skipped: see the reasons below)"
    return s


def stage_train(kit: Kit) -> list[Stage]:
    args, stages = kit.args, []
    for recipe in [r.strip() for r in args.recipes.split(",") if r.strip()]:
        run_dir = kit.work / f"train_{recipe}"
        cmd = [kit.py, str(Path(__file__).resolve()), "--child", "train.__main__",
               "--config", str(REPO / "train" / "configs" / f"{recipe}.toml"), "--data", args.data,
               "--output-dir", str(run_dir), "--overwrite", f"train.max_steps={args.steps}",
               'train.precision="bf16"', "train.progress=false", 'wandb.mode="disabled"']
        s = kit.run(Stage(f"train_{recipe}", f"b. bf16 training, {recipe} ({args.steps} steps)", cmd))
        parse_train(s, run_dir)
        stages.append(s)
    return stages


def stage_bench(kit: Kit) -> list[Stage]:
    args, stages = kit.args, []
    json_path = kit.work / "bench_infer.json"
    if json_path.exists():
        json_path.unlink()
    corpora = args.corpus or [str(SHARED / "corpus/news_sentences.parquet") + ":20000",
                              str(SHARED / "corpus/reuters21578.parquet") + ":2000"]
    model = args.bench_model
    if not model:  # trained in its own stage, so that the benchmark's GPU samples are tagging only
        run_dir = kit.work / "bench_minilm"
        s = kit.run(Stage("bench_model", "c0. benchmark model (MiniLM export, a few training steps)",
                          [kit.py, str(REPO / "bench" / "bench_infer.py"), "--make-export", str(run_dir),
                           "--memory-only"]))
        if s.ok and not (run_dir / "export" / "ner_config.json").exists():
            s.error = f"no export in {run_dir}"
        stages.append(s)
        model = str(run_dir / "export")
    cmd = [kit.py, str(REPO / "bench" / "bench_infer.py"), "--device", "cuda", "--precision", args.bench_precision,
           "--json", str(json_path), "--model", model]
    for c in corpora:
        cmd += ["--corpus", c]
    s = kit.run(Stage("bench", "c. tagging benchmark: ner-tag vs the Hugging Face pipeline", cmd))
    parse_bench(s, json_path)
    return stages + [s]


def stage_scale(kit: Kit) -> Stage:
    model = kit.args.bench_model or str(kit.work / "bench_minilm" / "export")
    table = kit.work / "scale.md"
    if table.exists():
        table.unlink()
    cmd = [kit.py, str(REPO / "bench" / "bench_gpu_scale.py"), "--model", model, "--corpus", kit.args.scale_corpus,
           "--precision", "bf16", "--batch-tokens", "16384,65536", "--host-workers", "0,4", "--results", str(table)]
    s = kit.run(Stage("scale", "d. ner-tag at scale: end to end against the model alone", cmd))
    if table.exists():
        s.results = {"table": table.read_text()}
    elif s.ok:
        s.error = f"no {table}"
    return s


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return run_child(args.child)
    torch, code = find_gpu()
    if torch is None:
        return code

    machine = describe_machine(torch)
    print(f"gpu-check: {', '.join(g['name'] for g in machine['gpus'])}; torch {machine['torch']}, "
          f"CUDA {machine['cuda']}", flush=True)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    env = repo_env(drop=DISTRIBUTED_VARS)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    kit = Kit(args, Path(args.work).resolve(), env)
    stages: list[Stage] = []
    if "tests" not in skip:
        stages.append(stage_tests(kit))
    if "train" not in skip:
        stages += stage_train(kit)
    if "bench" not in skip:
        stages += stage_bench(kit)
    if "scale" not in skip:
        stages.append(stage_scale(kit))

    results = Path(args.results)
    write_results(results, machine, stages, args)
    failed = [s.name for s in stages if not s.ok]
    print(f"gpu-check: results in {results}" + (f"; FAILED: {', '.join(failed)}" if failed else "; all stages ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
