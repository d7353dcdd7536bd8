"""The results file of ``bench/gpu_check.py`` (markdown): the machine, a summary row per stage, then each stage's
command, its numbers and, when it failed, the last lines of its output."""

from __future__ import annotations

import os
from pathlib import Path

HEADER = ("Written by `make gpu-check` (`python bench/gpu_check.py`); every stage runs in its own process and a "
          "failure is recorded here without stopping the others. GPU utilisation and memory: `nvidia-smi "
          "--query-gpu=index,utilization.gpu,memory.used -lms 500` during the stage; peak GPU memory: "
          "`torch.cuda.max_memory_allocated()` of the stage's process (of each run in the benchmark).")
BENCH_NOTE = ("Baseline: `pipeline(\"token-classification\", aggregation_strategy=\"first\", "
              "batch_size=64)` on the same GPU (truncates at 512 pieces; ner-tag tags every word). Seconds: "
              "tagging only (model loading not timed; ner-tag's include reading and writing Parquet). The "
              "utilisation in the summary covers the whole stage (baseline and every ner-tag run).")
SCALE_NOTE = ("`bench/bench_gpu_scale.py`: the model alone (buffers prepared beforehand) and `ner-tag` end to end "
              "(a fresh process each; words/s while tagging, model loading excluded).")


def _fmt(v, spec=",.0f") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)


def _tail(text: str, n: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


def machine_lines(machine: dict) -> list[str]:
    lines = []
    for g in machine["gpus"]:
        lines.append(f"- GPU {g['index']}: {g['name']} (compute capability {g['capability']}, {g['memory_gib']} GiB, "
                     f"native bf16: {'yes' if g['bf16'] else 'no'})")
    return lines + [
        f"- driver {machine.get('driver') or '?'}; torch {machine['torch']}, CUDA {machine['cuda']}, "
        f"cuDNN {machine['cudnn']}, NCCL {machine.get('nccl') or '?'}; transformers {machine.get('transformers')}; "
        f"Python {machine['python']}",
        f"- host {machine['host']}, {machine['cpus']} CPUs; code {machine.get('commit') or '?'}"]


def summary_lines(stages: list) -> list[str]:
    lines = ["| stage | result | time | GPU util mean / max | GPU memory used max |", "|---|---|---|---|---|"]
    for s in stages:
        util = "; ".join(f"{k}: {v['util_mean_pct']:.0f}% / {v['util_max_pct']:.0f}%" for k, v in s.gpu.items()
                         if isinstance(v, dict)) or "-"
        mem = "; ".join(f"{k}: {v['mem_used_max_mib']:,.0f} MiB" for k, v in s.gpu.items()
                        if isinstance(v, dict)) or "-"
        result = "ok" if s.ok else f"**FAILED** (exit {s.rc}{'; ' + s.error if s.error else ''})"
        lines.append(f"| {s.title} | {result} | {s.seconds:,.0f} s | {util} | {mem} |")
    return lines


def tests_lines(r: dict) -> list[str]:
    lines = [f"Result: {r.get('summary') or '(no pytest summary line)'}", ""]
    if r.get("outcomes"):
        lines += ["```", *r["outcomes"], "```", ""]
    return lines


def train_lines(r: dict, steps: int) -> list[str]:
    return ["| steps | wall | train tokens/s | valid F1 | test F1 | peak GPU memory |", "|---|---|---|---|---|---|",
            f"| {_fmt(r.get('steps'))} | {_fmt(r.get('train_wall_s'), ',.1f')} s | "
            f"{_fmt(r.get('train_tokens_per_s'))} | {_fmt(r.get('valid_f1'), '.2f')} | "
            f"{_fmt(r.get('test_f1'), '.2f')} | {_fmt(r.get('peak_gpu_mib'))} MiB |", "",
            f"({steps} steps only: the F1 scores show that the run works, not what the recipe reaches.)", ""]


def bench_lines(r: dict) -> list[str]:
    lines = [f"Model: `{r.get('model')}`; device {r.get('device')} ({r.get('gpu')}); {r.get('threads')} CPU "
             "threads. " + BENCH_NOTE, "",
             "| corpus | rows | words | run | seconds | words/s | pieces/s | speedup | span F1 vs baseline "
             "| peak GPU memory |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in r.get("corpora", []):
        lines.append(f"| {c['corpus']} | {c['rows']:,} | {c['words']:,} | HF pipeline | {c['baseline_s']:.2f} | "
                     f"{c['baseline_words_per_s']:,.0f} | {_fmt(c.get('baseline_pieces_per_s'))} | 1.00x | - | "
                     f"{_fmt(c.get('baseline_peak_gpu_mib'))} MiB |")
        for prec, o in c.get("ours", {}).items():
            lines.append(f"| | | | ner-tag {prec} | {o['tag_s']:.2f} | {o['words_per_s']:,.0f} | "
                         f"{_fmt(o.get('pieces_per_s'))} | {o['speedup']:.2f}x | {o['span_f1']:.3f} "
                         f"({o['span_f1_baseline_window']:.3f} in its window) | "
                         f"{_fmt(o.get('peak_gpu_mib'))} MiB |")
    return lines + [""]


def stage_lines(s, steps: int) -> list[str]:
    lines = [f"## {s.title}", "", "```", s.command_line(), "```", ""]
    if s.name == "tests" and s.results:
        lines += tests_lines(s.results)
    elif s.name.startswith("train_") and s.results:
        lines += train_lines(s.results, steps)
    elif s.name == "scale" and s.results:
        lines += [SCALE_NOTE, "", s.results["table"], ""]
    elif s.name == "bench" and s.results:
        lines += bench_lines(s.results)
    if not s.ok:
        lines += [f"Failure (last lines of {s.log}):", "", "```", _tail(s.output) or "(no output)", "```", ""]
    return lines + [f"Log: `{s.log}`", ""]


def write_results(path: Path, machine: dict, stages: list, args) -> None:
    """Writes the results file of ``stages`` (``gpu_check.Stage``) run on ``machine`` (``describe_machine``)."""
    lines = [f"# GPU check ({machine['date']})", "", HEADER, "", "## Machine", "", *machine_lines(machine), "",
             "## Summary", "", *summary_lines(stages), ""]
    for s in stages:
        lines += stage_lines(s, args.steps)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
