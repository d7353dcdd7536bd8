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
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEAK_MARK = "GPU_CHECK_PEAK_GPU_MIB="


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared/data/conll03-iob-pos.json"),
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
    p.add_argument("--scale-corpus", default=str(REPO.parent / "shared/corpus/news_sentences.parquet") + ":100000",
                   metavar="PATH[:ROWS]", help="sample of the scale stage (default: %(default)s)")
    p.add_argument("--skip", default="", help="stages to skip, comma-separated: tests,train,bench,scale")
    p.add_argument("--stage-timeout", type=int, default=3600, help="seconds per stage process (default: 3600)")
    p.add_argument("--child", nargs=argparse.REMAINDER,
                   help=argparse.SUPPRESS)  # internal: run a module's main() and print the peak GPU memory
    return p.parse_args(argv)


# ------------------------------------------------------------------ child: a tool's main() plus its peak GPU memory
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
def nvidia_smi(*args: str, timeout: int = 30) -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        r = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


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
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True)
        info["commit"] = commit.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except OSError:
        info["commit"] = None
    return info


# ------------------------------------------------------------------ GPU sampling
class GpuSampler:
    """``nvidia-smi -lms 500`` in the background; mean / max utilisation and max memory used per GPU."""

    def __init__(self, interval_ms: int = 500):
        self.cmd = ["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                    "-lms", str(interval_ms)]
        self.samples: dict[int, list[tuple[float, float]]] = {}
        self.proc = None
        self.thread = None

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            try:
                self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                self.thread = threading.Thread(target=self._read, daemon=True)
                self.thread.start()
            except OSError:
                self.proc = None
        return self

    def _read(self):
        for line in self.proc.stdout:
            parts = [x.strip() for x in line.split(",")]
            try:
                idx, util, mem = int(parts[0]), float(parts[1]), float(parts[2])
            except (ValueError, IndexError):
                continue  # "[N/A]" and the like
            self.samples.setdefault(idx, []).append((util, mem))

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.thread.join(timeout=5)
        return False

    def summary(self) -> dict:
        if self.proc is None:
            return {"note": "nvidia-smi not available: no utilisation samples"}
        out = {}
        for idx, rows in sorted(self.samples.items()):
            utils = [u for u, _ in rows]
            out[f"gpu{idx}"] = {"samples": len(rows), "util_mean_pct": round(sum(utils) / len(utils), 1),
                                "util_max_pct": max(utils), "mem_used_max_mib": max(m for _, m in rows)}
        return out


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
                proc = subprocess.Popen(stage.cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
                lines = []
                timer = threading.Timer(timeout, lambda: _kill_group(proc))
                timer.start()
                try:
                    for line in proc.stdout:
                        log.write(line)
                        lines.append(line)
                    stage.rc = proc.wait()
                finally:
                    timer.cancel()
                stage.output = "".join(lines)
                if stage.rc in (-9, -15) and time.time() - t0 >= timeout:
                    stage.error = f"killed after the stage timeout of {timeout} s"
        except OSError as e:
            stage.rc, stage.error = 127, f"could not start: {e}"
    stage.seconds = time.time() - t0
    stage.gpu = sampler.summary()
    status = "ok" if stage.ok else f"FAILED (exit {stage.rc}{'; ' + stage.error if stage.error else ''})"
    print(f"gpu-check: [{stage.name}] {status} in {stage.seconds:.0f} s (log: {log_path})", flush=True)
    return stage


def _kill_group(proc):
    import signal

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


# ------------------------------------------------------------------ results file
def _fmt(v, spec=",.0f") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)


def _tail(text: str, n: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


def write_results(path: Path, machine: dict, stages: list[Stage], args) -> None:
    L = [f"# GPU check ({machine['date']})", "",
         "Written by `make gpu-check` (`python bench/gpu_check.py`); every stage runs in its own process and a "
         "failure is recorded here without stopping the others. GPU utilisation and memory: `nvidia-smi "
         "--query-gpu=index,utilization.gpu,memory.used -lms 500` during the stage; peak GPU memory: "
         "`torch.cuda.max_memory_allocated()` of the stage's process (of each run in the benchmark).", "",
         "## Machine", ""]
    for g in machine["gpus"]:
        L.append(f"- GPU {g['index']}: {g['name']} (compute capability {g['capability']}, {g['memory_gib']} GiB, "
                 f"native bf16: {'yes' if g['bf16'] else 'no'})")
    L += [f"- driver {machine.get('driver') or '?'}; torch {machine['torch']}, CUDA {machine['cuda']}, "
          f"cuDNN {machine['cudnn']}, NCCL {machine.get('nccl') or '?'}; transformers {machine.get('transformers')}; "
          f"Python {machine['python']}",
          f"- host {machine['host']}, {machine['cpus']} CPUs; code {machine.get('commit') or '?'}", "",
          "## Summary", "", "| stage | result | time | GPU util mean / max | GPU memory used max |",
          "|---|---|---|---|---|"]
    for s in stages:
        util = "; ".join(f"{k}: {v['util_mean_pct']:.0f}% / {v['util_max_pct']:.0f}%" for k, v in s.gpu.items()
                         if isinstance(v, dict)) or "-"
        mem = "; ".join(f"{k}: {v['mem_used_max_mib']:,.0f} MiB" for k, v in s.gpu.items()
                        if isinstance(v, dict)) or "-"
        result = "ok" if s.ok else f"**FAILED** (exit {s.rc}{'; ' + s.error if s.error else ''})"
        L.append(f"| {s.title} | {result} | {s.seconds:,.0f} s | {util} | {mem} |")
    L.append("")
    for s in stages:
        L += [f"## {s.title}", "", "```", s.command_line(), "```", ""]
        if s.name == "tests" and s.results:
            L += [f"Result: {s.results.get('summary') or '(no pytest summary line)'}", ""]
            if s.results.get("outcomes"):
                L += ["```", *s.results["outcomes"], "```", ""]
        elif s.name.startswith("train_") and s.results:
            r = s.results
            L += ["| steps | wall | train tokens/s | valid F1 | test F1 | peak GPU memory |",
                  "|---|---|---|---|---|---|",
                  f"| {_fmt(r.get('steps'))} | {_fmt(r.get('train_wall_s'), ',.1f')} s | "
                  f"{_fmt(r.get('train_tokens_per_s'))} | {_fmt(r.get('valid_f1'), '.2f')} | "
                  f"{_fmt(r.get('test_f1'), '.2f')} | {_fmt(r.get('peak_gpu_mib'))} MiB |", "",
                  f"({args.steps} steps only: the F1 scores show that the run works, not what the recipe reaches.)",
                  ""]
        elif s.name == "scale" and s.results:
            L += ["`bench/bench_gpu_scale.py`: the model alone (buffers prepared beforehand) and `ner-tag` end to end "
                  "(a fresh process each; words/s while tagging, model loading excluded).", "",
                  s.results["table"], ""]
        elif s.name == "bench" and s.results:
            r = s.results
            L += [f"Model: `{r.get('model')}`; device {r.get('device')} ({r.get('gpu')}); {r.get('threads')} CPU "
                  "threads. Baseline: `pipeline(\"token-classification\", aggregation_strategy=\"first\", "
                  "batch_size=64)` on the same GPU (truncates at 512 pieces; ner-tag tags every word). Seconds: "
                  "tagging only (model loading not timed; ner-tag's include reading and writing Parquet). The "
                  "utilisation in the summary covers the whole stage (baseline and every ner-tag run).", "",
                  "| corpus | rows | words | run | seconds | words/s | pieces/s | speedup | span F1 vs baseline "
                  "| peak GPU memory |", "|---|---|---|---|---|---|---|---|---|---|"]
            for c in r.get("corpora", []):
                L.append(f"| {c['corpus']} | {c['rows']:,} | {c['words']:,} | HF pipeline | {c['baseline_s']:.2f} | "
                         f"{c['baseline_words_per_s']:,.0f} | {_fmt(c.get('baseline_pieces_per_s'))} | 1.00x | - | "
                         f"{_fmt(c.get('baseline_peak_gpu_mib'))} MiB |")
                for prec, o in c.get("ours", {}).items():
                    L.append(f"| | | | ner-tag {prec} | {o['tag_s']:.2f} | {o['words_per_s']:,.0f} | "
                             f"{_fmt(o.get('pieces_per_s'))} | {o['speedup']:.2f}x | {o['span_f1']:.3f} "
                             f"({o['span_f1_baseline_window']:.3f} in its window) | "
                             f"{_fmt(o.get('peak_gpu_mib'))} MiB |")
            L.append("")
        if not s.ok:
            L += [f"Failure (last lines of {s.log}):", "", "```", _tail(s.output) or "(no output)", "```", ""]
        L += [f"Log: `{s.log}`", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(L))
    os.replace(tmp, path)


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return run_child(args.child)
    try:
        import torch
    except ImportError as e:
        print(f"gpu-check: torch is not importable ({e}); run `make setup` first", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        listed = nvidia_smi("-L") or ""
        if "GPU" in listed:
            print(f"gpu-check: nvidia-smi sees a GPU but torch {torch.__version__} (CUDA {torch.version.cuda}) "
                  "cannot use it: install a CUDA build of torch; nothing written", file=sys.stderr)
            return 2
        print("gpu-check: no CUDA GPU on this machine (torch.cuda.is_available() is False): nothing to check, "
              "nothing written")
        return 0

    machine = describe_machine(torch)
    print(f"gpu-check: {', '.join(g['name'] for g in machine['gpus'])}; torch {machine['torch']}, "
          f"CUDA {machine['cuda']}", flush=True)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    work = Path(args.work).resolve()
    logs = work / "logs"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    py = sys.executable
    stages: list[Stage] = []

    if "tests" not in skip:
        s = run_stage(Stage("tests", "a. tests marked gpu", [py, "-m", "pytest", "-m", "gpu", "-rA", "-q",
                                                                 "-p", "no:cacheprovider"]),
                      logs, args.stage_timeout, env)
        parse_tests(s)
        if s.rc == 5:  # pytest: nothing collected
            s.error = "no test was collected"
        elif s.rc == 0 and " passed" not in s.results["summary"]:
            s.error = "no gpu test ran (all skipped: see the reasons below)"
        stages.append(s)

    if "train" not in skip:
        for recipe in [r.strip() for r in args.recipes.split(",") if r.strip()]:
            run_dir = work / f"train_{recipe}"
            cmd = [py, str(Path(__file__).resolve()), "--child", "train.__main__",
                   "--config", str(REPO / "train" / "configs" / f"{recipe}.toml"), "--data", args.data,
                   "--output-dir", str(run_dir), "--overwrite", f"train.max_steps={args.steps}",
                   'train.precision="bf16"', "train.progress=false", 'wandb.mode="disabled"']
            s = run_stage(Stage(f"train_{recipe}", f"b. bf16 training, {recipe} ({args.steps} steps)", cmd),
                          logs, args.stage_timeout, env)
            parse_train(s, run_dir)
            stages.append(s)

    if "bench" not in skip:
        json_path = work / "bench_infer.json"
        if json_path.exists():
            json_path.unlink()
        corpora = args.corpus or [str(REPO.parent / "shared/corpus/news_sentences.parquet") + ":20000",
                                  str(REPO.parent / "shared/corpus/reuters21578.parquet") + ":2000"]
        model = args.bench_model
        if not model:  # trained in its own stage, so that the benchmark's GPU samples are tagging only
            run_dir = work / "bench_minilm"
            s = run_stage(Stage("bench_model", "c0. benchmark model (MiniLM export, a few training steps)",
                                [py, str(REPO / "bench" / "bench_infer.py"), "--make-export", str(run_dir),
                                 "--memory-only"]), logs, args.stage_timeout, env)
            if s.ok and not (run_dir / "export" / "ner_config.json").exists():
                s.error = f"no export in {run_dir}"
            stages.append(s)
            model = str(run_dir / "export")
        cmd = [py, str(REPO / "bench" / "bench_infer.py"), "--device", "cuda", "--precision", args.bench_precision,
               "--json", str(json_path), "--model", model]
        for c in corpora:
            cmd += ["--corpus", c]
        s = run_stage(Stage("bench", "c. tagging benchmark: ner-tag vs the Hugging Face pipeline", cmd),
                      logs, args.stage_timeout, env)
        parse_bench(s, json_path)
        stages.append(s)

    if "scale" not in skip:
        model = args.bench_model or str(work / "bench_minilm" / "export")
        table = work / "scale.md"
        if table.exists():
            table.unlink()
        cmd = [py, str(REPO / "bench" / "bench_gpu_scale.py"), "--model", model, "--corpus", args.scale_corpus,
               "--precision", "bf16", "--batch-tokens", "16384,65536", "--host-workers", "0,4",
               "--results", str(table)]
        s = run_stage(Stage("scale", "d. ner-tag at scale: end to end against the model alone", cmd),
                      logs, args.stage_timeout, env)
        if table.exists():
            s.results = {"table": table.read_text()}
        elif s.ok:
            s.error = f"no {table}"
        stages.append(s)

    results = Path(args.results)
    write_results(results, machine, stages, args)
    failed = [s.name for s in stages if not s.ok]
    print(f"gpu-check: results in {results}" + (f"; FAILED: {', '.join(failed)}" if failed else "; all stages ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
