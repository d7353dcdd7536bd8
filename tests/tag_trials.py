"""Two ``ner-tag`` tasks (``--num-shards 2``) on one output folder, as forked children of one process that has
imported torch once (so a trial costs its tagging, not two interpreter start-ups).  Used by
tests/test_infer_stealing.py; also by hand::

    python tests/tag_trials.py kill --model EXPORT --work DIR --trials 20 --seed 1
    python tests/tag_trials.py slow --model EXPORT --work DIR
    python tests/tag_trials.py both ...     # the slow trial, then the kill trials

``kill``: trial 0 runs both tasks to the end; every further trial SIGKILLs one task (chosen at random) once a
random number of parts is finished, at a random moment of a batch, lets the other finish, and counts the
output's rows by id.
``slow``: task 1 runs 5x slower than task 0 (it sleeps 4x the time of each of its batch cycles); both start
together; the time until every part is done is compared with the ideal, N parts / (rate of task 0 * 1.2).
Each prints one JSON line per trial and a final ``{"result": ...}`` line.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

ROWS_PER_PART = 2


def write_corpus(folder: Path, files: int, rows: int) -> list[int]:
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for f in range(files):
        first = 1000 * f
        pq.write_table(pa.table({"id": list(range(first, first + rows)),
                                 "text": [f"Angela Merkel visited Japan {i} times ." for i in range(rows)]}),
                       folder / f"docs-{f}.parquet", row_group_size=ROWS_PER_PART)
        ids += list(range(first, first + rows))
    return ids


def count_ids(out: Path) -> collections.Counter:
    ids = collections.Counter()
    for part in sorted(out.glob("part-*.parquet")):
        ids.update(pq.read_table(part, columns=["id"]).column("id").to_pylist())
    return ids


def _child(args, shard: int, out: Path, sleep_s: float, slow: float, times: Path | None, work: Path) -> None:
    """Runs in the forked child: ner-tag as shard ``shard`` of 2; never returns."""
    code = 1
    try:
        from infer import runner, tagger
        from infer.__main__ import main

        run_batch = tagger.TextTagger.run_spans  # the model side ner-tag calls (TextTagger.run calls it too)
        last = [None]

        def paced(self, prep, *a):
            t = time.time()
            result = run_batch(self, prep, *a)
            if slow > 1:  # slow x the whole cycle since the previous batch ended (reading, writing, model)
                cycle = time.time() - (last[0] if last[0] is not None else t) + sleep_s
                time.sleep(sleep_s + (slow - 1) * cycle)
            elif sleep_s:
                time.sleep(sleep_s)
            last[0] = time.time()
            return result

        tagger.TextTagger.run_spans = paced
        tag_parts = runner._tag_parts

        def timed(*a, **k):
            t0 = time.time()
            try:
                return tag_parts(*a, **k)
            finally:
                if times is not None:
                    times.write_text(json.dumps({"start": t0, "end": time.time(), "pid": os.getpid()}))

        runner._tag_parts = timed
        code = main(["--model", args.model, "--input", str(work / "in"), "--output", str(out),
                     "--rows-per-part", str(ROWS_PER_PART), "--buffer-rows", str(ROWS_PER_PART), "--threads", "1",
                     "--no-progress", "--num-shards", "2", "--shard-index", str(shard), "--log-level", "WARNING",
                     "--wait-for-others", "60"])
    except BaseException:  # noqa: BLE001 - reported through the exit code
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _start(args, shard, out, sleep_s=0.0, slow=1.0, times=None, work=None) -> int:
    pid = os.fork()
    if pid == 0:
        _child(args, shard, out, sleep_s, slow, times, work)
    return pid


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def kill_trials(args) -> dict:
    work = Path(args.work) / "kill"
    ids = write_corpus(work / "in", args.files, args.rows)
    rng = random.Random(args.seed)
    n_parts = len(ids) // ROWS_PER_PART
    results = []
    duration = None
    for trial in range(args.trials + 1):
        out = work / f"out-{trial}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.time()
        pids = [_start(args, k, out, args.sleep, work=work) for k in (0, 1)]
        victim, delay = None, None
        if duration is not None:  # after a random number of finished parts, at a random moment of the next
            victim, after = rng.randrange(2), rng.randrange(n_parts - 1)
            while len(list((out / "_manifest").glob("part-*.json"))) < after and time.time() - t0 < 60:
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 2 * args.sleep))
            delay = time.time() - t0
            os.kill(pids[victim], signal.SIGKILL)
        codes = [_wait(p) for p in pids]
        if duration is None:
            duration = time.time() - t0
        tagged = count_ids(out)
        row = {"trial": trial, "victim": victim, "kill_at_s": None if delay is None else round(delay, 3),
               "codes": codes, "missing": len(set(ids) - set(tagged)),
               "duplicated": sum(n - 1 for n in tagged.values() if n > 1),
               "unknown": len(set(tagged) - set(ids)),
               "killed_mid_run": victim is not None and codes[victim] == -signal.SIGKILL,
               "victim_parts_done": None if victim is None else sum(
                   json.loads(p.read_text())["pid"] == pids[victim] for p in (out / "_manifest").glob("part-*.json")),
               "survivor_ok": all(c == 0 for k, c in enumerate(codes) if k != victim)}
        print(json.dumps(row), flush=True)
        if trial:
            results.append(row)
    summary = {"trials": len(results), "killed_mid_run": sum(r["killed_mid_run"] for r in results),
               "rows": len(ids), "rows_missing": sum(r["missing"] + r["unknown"] for r in results),
               "rows_duplicated": sum(r["duplicated"] for r in results),
               "survivors_failed": sum(not r["survivor_ok"] for r in results), "trial_s": round(duration, 2)}
    return summary


def slow_trial(args) -> dict:
    work = Path(args.work) / "slow"
    ids = write_corpus(work / "in", args.files, args.slow_rows)
    out = work / "out-slow"
    shutil.rmtree(out, ignore_errors=True)
    times = [work / f"times-{k}.json" for k in (0, 1)]
    pids = [_start(args, k, out, args.slow_sleep, 5.0 if k == 1 else 1.0, times[k], work) for k in (0, 1)]
    codes = [_wait(p) for p in pids]
    spans = [json.loads(t.read_text()) for t in times]
    entries = [json.loads(p.read_text()) for p in (out / "_manifest").glob("part-*.json")]
    fast = sorted(e["finished_at"] for e in entries if e["pid"] == spans[0]["pid"])
    slow = [e for e in entries if e["pid"] == spans[1]["pid"]]
    start = min(s["start"] for s in spans)
    makespan = max(e["finished_at"] for e in entries) - start
    per_part_fast = (fast[-1] - spans[0]["start"]) / len(fast)
    ideal = len(entries) * per_part_fast / (1 + 1 / 5)
    tagged = count_ids(out)
    return {"codes": codes, "parts": len(entries), "parts_fast": len(fast), "parts_slow": len(slow),
            "makespan_s": round(makespan, 3), "ideal_s": round(ideal, 3), "ratio": round(makespan / ideal, 3),
            "static_shares_s": round(len(entries) / 2 * 5 * per_part_fast, 3),
            "missing": len(set(ids) - set(tagged)), "duplicated": sum(n - 1 for n in tagged.values() if n > 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["kill", "slow", "both"])
    p.add_argument("--model", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--files", type=int, default=2)
    p.add_argument("--rows", type=int, default=12, help="rows per file (parts of 2 rows)")
    p.add_argument("--sleep", type=float, default=0.05, help="seconds each task sleeps per batch")
    p.add_argument("--slow-rows", type=int, default=40, help="rows per file in the slow trial")
    p.add_argument("--slow-sleep", type=float, default=0.1, help="per batch, in the slow trial")
    args = p.parse_args(argv)
    import torch

    from taggers.export import load_tagger

    load_tagger(args.model, torch.device("cpu"))  # every import (transformers' lazy ones too) before forking

    result = {}
    if args.mode in ("slow", "both"):
        result["slow"] = slow_trial(args)
        print(json.dumps(result["slow"]), flush=True)
    if args.mode in ("kill", "both"):
        result["kill"] = kill_trials(args)
    print(json.dumps({"result": result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
