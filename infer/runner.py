"""The batch tagging job: plan, shard, stream, tag, write, resume, summarise.

One process (or each torchrun rank / SLURM array task) does:

1. find the input files and plan the parts (:mod:`infer.sources`);
2. load the model (before the output folder is touched: a broken export must
   not leave a folder that then refuses the fixed one);
3. check or initialise the output folder under a file lock (:mod:`infer.output`):
   same model, precision and input options -> resume, skipping finished parts
   (of input files that changed or left since, the parts are dropped:
   :func:`infer.output.replan`); otherwise refuse (or clear with ``--overwrite``);
4. tag the unfinished parts: its own shard's first (part ``i`` belongs to shard
   ``i % num_shards``: ``--num-shards/--shard-index`` or the SLURM array; not
   the torchrun world size), then those of the other shards, from their end
   (work stealing, so the job ends when the parts are done, not when the
   slowest shard is).  Every process claims a part before reading it
   (:func:`infer.parts.claim_part`); a part claimed by a live process is left
   to it, and when nothing else is left the process waits for those parts:
   it takes one over when its holder dies (the claim dies with it), and gives
   up after ``--wait-for-others`` seconds without any of them finishing,
   listing them (exit code 5, see ``docs/failures.md``).  A part that cannot be
   read is an error, or with ``--on-bad-file skip`` recorded as bad (exit
   code 6 at the end);
5. a background thread reads each part in bounded buffers (``--buffer-rows``
   rows / ``--buffer-chars`` characters) and prepares them (words, windows,
   length-sorted token-budget batches: :class:`infer.host_encoder.HostEncoder`) while
   the main thread runs the model on the previous buffer and decodes the spans
   (on the model's device), and an output thread (:mod:`infer.output_stage`)
   turns them into Arrow columns and writes them; or, with host worker processes (:func:`host_workers`: by
   default beside a GPU, not on a CPU, whose model needs every core), the
   thread hands each buffer to a worker (round robin) and the main thread
   collects the results in input order (pinned tensors on a GPU).  The queue
   between them holds at most two buffers (plus one per worker), so memory does
   not grow with the corpus;
6. results go, in input order, into the part's temporary Parquet file, which
   is renamed and recorded in the manifest when the part is complete;
7. a summary (rows, words, entities per type, wall time, words/s) is printed
   and written to ``OUT/_summary.json`` (under torchrun by rank 0, once every
   rank has posted its figures to the process group's store: polled, not a
   collective, so a rank that finished early never meets the process-group
   timeout; in a SLURM array by every task, the totals read from the
   manifest, so the last task to finish writes the complete totals).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass

import pyarrow as pa
import torch

from common import distributed
from common.tagdir import SUMMARY_FILE
from common.teacher import TEACHER_LABELS_KEY

from . import fs
from . import output as out_utils
from .parts import done_parts, read_bad_parts, read_manifest, record_skipped_files
from . import shares
from .sources import InputError, discover, plan_parts, read_buffers
from taggers.export import ExportError, load_tagger, read_export_config
from taggers.precision import resolve_precision

from .host_workers import HostWorkers
from .memory import bound_malloc
from .output_stage import OutputStage
from .tagger import ENTITIES_TYPE, WORDS_TYPE, TextTagger, word_probs_type

log = logging.getLogger("infer")

PROCESS_GROUP_TIMEOUT_S = 5 * 60
"""``--pg-timeout``'s default: how long a rank waits for its peers in a collective before the job fails.  The
only collectives are at the start (loading the model, opening the folder); the end is polled (see run)."""
WAIT_FOR_OTHERS_S = 15 * 60
"""``--wait-for-others``'s default: how long a process with nothing left to take waits for parts held by
live others to finish (counted from the last one that did) before it exits with code 5."""
EXIT_BAD_FILES = 6
EXIT_INCOMPLETE = 5


@dataclass
class TagOptions:
    model: str
    inputs: list[str]
    output: str
    text_column: str = "text"
    id_column: str | None = None
    keep_columns: list[str] | None = None
    batch_tokens: int = 0
    device: str = "auto"
    precision: str = "auto"
    overwrite: bool = False
    num_shards: int | None = None
    shard_index: int | None = None
    rows_per_part: int = 10000
    buffer_rows: int = 4096
    buffer_chars: int = 2_000_000
    chunking: str = "sentences"
    chunk_pieces: int = 0
    threads: int = 0
    progress: bool = True
    host_workers: int | None = None
    """Worker processes for the CPU side (None: ``NER_TAG_HOST_WORKERS``, else 0; see host_workers)."""
    word_probs: bool = False
    """Also write each row's ``words`` and every word's probabilities over the labels (``word_probs``; the
    labels in the schema metadata): a teacher's output, read by training's ``data.teacher``."""
    on_bad_file: str = "fail"
    """``fail``: a bad input file stops the run (exit 2); ``skip``: it is listed and the rest is tagged."""
    pg_timeout_s: float = PROCESS_GROUP_TIMEOUT_S
    wait_for_others_s: float = WAIT_FOR_OTHERS_S


def carried_columns(opts: TagOptions) -> list[str] | None:
    """``None`` (every non-text column) unless --id-column / --keep-columns name them."""
    if opts.id_column is None and opts.keep_columns is None:
        return None
    cols = ([opts.id_column] if opts.id_column else []) + list(opts.keep_columns or [])
    return list(dict.fromkeys(cols))


def shard_from_env(num_shards: int | None, shard_index: int | None) -> tuple[int, int]:
    """``--num-shards/--shard-index``, else a SLURM array's task count and this task's position in it
    (``--array=0-14:2``: (ID - MIN) / STEP), else (1, 0)."""
    if num_shards is None and "SLURM_ARRAY_TASK_COUNT" in os.environ and "SLURM_ARRAY_TASK_ID" in os.environ:
        num_shards = int(os.environ["SLURM_ARRAY_TASK_COUNT"])
        if shard_index is None:
            offset = int(os.environ["SLURM_ARRAY_TASK_ID"]) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            shard_index = offset // max(1, int(os.environ.get("SLURM_ARRAY_TASK_STEP", "1") or 1))
    num_shards = num_shards or 1
    shard_index = shard_index or 0
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard-index {shard_index} is not in [0, {num_shards})")
    return num_shards, shard_index


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def host_workers(opts: TagOptions) -> int:
    """How many worker processes prepare buffers (words, pieces, windows, batches) for this process's model.

    ``opts.host_workers``, else ``NER_TAG_HOST_WORKERS``, else none: the host side then runs in a thread beside
    the model.  On a CPU the model needs every core; beside a GPU (H200, 16 cores, MiniLM export) 0 host workers
    tagged faster than 2, 4 or 8 (``bench/results_gpu_scale.md``): the main process, which runs the model and
    writes the spans, is the limit there, and collecting the workers' buffers adds to it.
    """
    if opts.host_workers is not None:
        return max(0, int(opts.host_workers))
    if os.environ.get("NER_TAG_HOST_WORKERS", "").strip():
        return max(0, int(os.environ["NER_TAG_HOST_WORKERS"]))
    return 0


def _set_threads(opts: TagOptions, device: torch.device) -> int:
    """Torch's threads: ``--threads``, else this process's share of the cores less its host workers' (so that
    they do not fight over cores), at most 4 beside a GPU."""
    if opts.threads:
        n = opts.threads
    else:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        n = max(1, _cpus() // local - host_workers(opts))
        if device.type == "cuda":
            n = min(n, 4)
    torch.set_num_threads(n)
    return n


class _Stats:
    def __init__(self):
        self.rows = self.words = self.pieces = self.padded = 0
        self.entities: dict[str, int] = {}
        self.parts = self.stolen = self.bad = 0
        self.left: list[dict] = []  # parts this process gave up waiting for

    def add_entities(self, counts: dict[str, int]):
        for k, v in counts.items():
            self.entities[k] = self.entities.get(k, 0) + v

    def as_dict(self) -> dict:
        return {"rows": self.rows, "words": self.words, "pieces": self.pieces, "padded_pieces": self.padded,
                "entities": dict(sorted(self.entities.items())), "parts": self.parts, "parts_stolen": self.stolen,
                "parts_bad": self.bad, "left": self.left}


def _producer(tagger: TextTagger, work, sources, columns, opts, claims: dict, q: queue.Queue,
              stop: threading.Event, workers: "HostWorkers | None" = None, left: list | None = None):
    """Claims and reads the parts; prepares each buffer itself, or hands it to a host worker and passes on the
    ticket (the main thread collects the workers' results in input order)."""
    def put(item):
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    try:
        for part, claim in shares.claimed_parts(opts.output, work, opts.wait_for_others_s, stop,
                                    left if left is not None else [], skip_bad=opts.on_bad_file == "skip"):
            claims[part.index] = claim  # released by the main thread once the part is committed
            src = sources[part.source]
            try:
                for table, texts in read_buffers(src, part, columns, opts.text_column, opts.buffer_rows,
                                                 opts.buffer_chars):
                    if stop.is_set():
                        return
                    prep = (workers.submit(texts), texts) if workers is not None else tagger.prepare(texts)
                    if not put(("buffer", part, table, prep)):
                        return
            except InputError as e:  # corrupt pages, a file that changed: skipped or fatal
                if opts.on_bad_file != "skip":
                    raise
                if not put(("bad", part, None, str(e))):
                    return
                continue
            if not put(("end", part, None, None)):
                return
    except BaseException as e:  # handed to the main thread, which raises it
        put(("error", e, None, None))
    finally:
        put(None)


def run(opts: TagOptions) -> dict:
    """Tag the input into ``opts.output``; returns the summary (on every rank)."""
    t0 = time.time()
    bound_malloc()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = distributed.setup(opts.device, timeout_s=int(opts.pg_timeout_s)) if world > 1 else \
        distributed.DistInfo(device=distributed.resolve_device(opts.device))
    try:
        return _run(opts, info, t0)
    finally:
        if world > 1:  # never a barrier: ranks end at different times (the summary is polled: gather_on_rank0)
            distributed.teardown(completed=False)


def _same_on_every_rank(fn, info):
    """``fn()``; when it fails on any rank, every rank raises (the first) error, so that all stop with the
    same message instead of some waiting for the others in a collective."""
    result = error = None
    try:
        result = fn()
    except ValueError as e:  # InputError, OutputError, ExportError: a message for the user
        error = e
    errors = distributed.gather_objects(None if error is None else str(error), info)
    if error is not None:
        raise error
    if any(errors):
        raise out_utils.OutputError(next(e for e in errors if e))
    return result


def _load_tagger(opts: TagOptions, device, precision: str) -> TextTagger:
    """The export's tagger; an export that cannot be loaded (e.g. missing or broken weights) is an
    ExportError naming it, whatever the loader raised (the traceback is logged at DEBUG)."""
    try:
        model, windower = load_tagger(opts.model, device)
    except ExportError:
        raise
    except Exception as e:
        log.debug("loading %s failed", opts.model, exc_info=True)
        raise ExportError(f"--model {opts.model}: cannot load the model: {' '.join(str(e).split())}") from None
    return TextTagger(model, windower, device, precision=precision, batch_tokens=opts.batch_tokens,
                      chunking=opts.chunking, chunk_pieces=opts.chunk_pieces)


def _run(opts: TagOptions, info, t0: float) -> dict:
    num_shards, shard_index = shard_from_env(opts.num_shards, opts.shard_index)
    threads = _set_threads(opts, info.device)

    meta = read_export_config(opts.model)
    bad_files: list[dict] | None = [] if opts.on_bad_file == "skip" else None
    sources, columns = discover(opts.inputs, opts.text_column, carried_columns(opts), bad_files)
    out_abs = fs.abspath(opts.output)
    for spec in opts.inputs:
        if fs.isdir(spec) and (out_abs + os.sep).startswith(fs.abspath(spec) + os.sep):
            raise InputError(f"--output {opts.output} is inside the input folder {spec}; its parts would "
                             "be read as input next time. Choose an output folder outside the input.")
    for b in bad_files or []:
        log.warning("skipping %s", b["error"])
    parts = plan_parts(sources, opts.rows_per_part)
    plan = [p.to_json() for p in parts]
    files = [{"path": fs.abspath(s.path), "size": fs.getsize(s.path), "rows": s.num_rows,
              "fingerprint": s.fingerprint} for s in sources]
    input_options = {"text_column": opts.text_column, "columns": columns, "rows_per_part": opts.rows_per_part,
                     "chunking": opts.chunking, "chunk_pieces": opts.chunk_pieces, "word_probs": opts.word_probs}
    column_types = {c: str(sources[0].schema.field(c).type) for c in columns}
    precision = resolve_precision(opts.precision, info.device)  # "auto" and what it resolves to are the same
    run_info = {
        "format": out_utils.RUN_FORMAT, "tool": "ner-tag",
        "model": {"path": os.path.abspath(opts.model), "fingerprint": out_utils.model_fingerprint(opts.model),
                  "model_type": meta["model_type"], "labels": meta["labels"], "precision": precision},
        "input": {"fingerprint": out_utils.input_fingerprint(files, input_options),
                  "options_fingerprint": out_utils.options_fingerprint({**input_options, "types": column_types}),
                  "files": files, "bad_files": bad_files or [], **input_options},
        "parts": plan, "created": time.time(),
    }
    tagger = _same_on_every_rank(lambda: _load_tagger(opts, info.device, precision), info)
    _same_on_every_rank(lambda: out_utils.open_folder(opts.output, run_info, opts.overwrite), info)
    if info.is_main:  # (without skip, a bad file stopped the run above: none is left out)
        record_skipped_files(opts.output, bad_files or [])

    done = done_parts(opts.output, plan)
    work = [p for p in shares.work_order(parts, num_shards, shard_index) if p.index not in done]
    own = sum(p.index % num_shards == shard_index for p in work)
    log.info("%d parts planned, %d already done; %d to do (%d of shard %d/%d first, then the others' not taken "
             "by their own tasks), shared by %d process(es)", len(parts), len(done), len(work), own, shard_index,
             num_shards, info.world_size)

    stats = _Stats()
    t_tag = time.time()
    if work:
        _tag_parts(tagger, work, sources, columns, opts, stats, show=opts.progress and info.is_main,
                   total_rows=sum(p.num_rows for p in work), own=lambda p: p.index % num_shards == shard_index)
    t_end = time.time()
    this = {**stats.as_dict(), "wall_s": round(t_end - t0, 3), "tag_s": round(t_end - t_tag, 3),
            "words_per_s": round(stats.words / max(t_end - t_tag, 1e-9), 1),
            "rank": info.rank, "shard": shard_index, "device": str(info.device), "precision": precision,
            "threads": threads, "host_workers": host_workers(opts)}
    per_rank = shares.gather_on_rank0(this, info)
    summary = _summary(opts, per_rank or [this], plan, bad_files or [], t0, info, num_shards, shard_index)
    summary["this_process"] = {"left": stats.left, "rank": info.rank}
    if per_rank is not None:  # rank 0 (or the only process): it has every rank's figures
        fs.write_json(fs.join(opts.output, SUMMARY_FILE), summary)
    return summary


def _tag_parts(tagger: TextTagger, work, sources, columns, opts, stats: _Stats, show: bool, total_rows: int,
               own=lambda part: True):
    from tqdm import tqdm

    fields = [sources[0].schema.field(c) for c in columns] + [pa.field("entities", ENTITIES_TYPE)]
    if opts.word_probs:
        fields += [pa.field("words", WORDS_TYPE), pa.field("word_probs", word_probs_type(len(tagger.labels)))]
    schema = pa.schema(fields, metadata={TEACHER_LABELS_KEY: json.dumps(tagger.labels)} if opts.word_probs else None)
    n_workers = host_workers(opts)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer gets no cores of its own
    workers = HostWorkers(tagger.encoder, n_workers) if n_workers else None
    q: queue.Queue = queue.Queue(maxsize=2 + n_workers)
    stop = threading.Event()
    claims: dict = {}  # part index -> its held claim
    thread = threading.Thread(target=_producer, args=(tagger, work, sources, columns, opts, claims, q, stop, workers,
                                                      stats.left), name="ner-tag-prepare", daemon=True)
    thread.start()
    bar = tqdm(total=total_rows, unit="rows", disable=not show, dynamic_ncols=True, smoothing=0.05,
               file=sys.stderr)
    out = OutputStage(tagger, opts.output, schema, columns, opts.word_probs, stats, _Stats, claims, own)
    t_start = time.time()
    failed = True
    try:
        while True:
            item = q.get()
            if item is None:
                break
            kind, part, table, prep = item
            if kind == "error":
                raise part
            if kind == "bad":  # --on-bad-file skip: the part's rows could not be read (prep: the error)
                out.bad(part, prep)
                continue
            if kind == "end":
                out.end(part)
                continue
            if workers is not None:
                ticket, texts = prep
                prep = tagger.attach(workers.result(ticket), texts)
            found, distributions = tagger.run_spans(prep, opts.word_probs)
            prep.batches = []  # the output stage needs the words and texts only
            out.buffer(part, table, prep, found, distributions)
            bar.update(prep.num_rows)
            bar.set_postfix_str(f"{stats.words / max(time.time() - t_start, 1e-9):,.0f} words/s", refresh=False)
            del prep, found, distributions, table
        out.finish()
        failed = False
    except BaseException:
        stop.set()
        out.abort()
        raise
    finally:
        stop.set()
        if workers is not None:  # a producer blocked on a worker's pipe gets an error and ends
            workers.close(kill=failed)
        while thread.is_alive():
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()
        bar.close()
        for claim in list(claims.values()):  # parts not finished: free for the next run
            claim.close()


def _summary(opts, per_rank: list[dict], plan: list[dict], bad_files: list[dict], t0: float, info, num_shards,
             shard_index) -> dict:
    manifest = read_manifest(opts.output)
    done = done_parts(opts.output, plan)
    bad_parts = read_bad_parts(opts.output, plan)
    totals = {"rows": 0, "words": 0, "entities": {}}
    for i in done:
        e = manifest.get(i, {})
        totals["rows"] += e.get("num_rows", 0)
        totals["words"] += e.get("words", 0)
        for k, v in e.get("entities", {}).items():
            totals["entities"][k] = totals["entities"].get(k, 0) + v
    totals["entities"] = dict(sorted(totals["entities"].items()))
    totals["parts_done"] = len(done)
    totals["parts_total"] = len(plan)
    totals["complete"] = len(done) >= len(plan)
    totals["parts_bad"] = len(bad_parts)
    totals["parts_left"] = sorted(p["index"] for p in plan if p["index"] not in done and p["index"] not in bad_parts)
    skipped = [dict(b) for b in bad_files]  # files that could not be opened, or whose columns do not fit
    for i, e in sorted(bad_parts.items()):  # files with parts that could not be read
        entry = next((b for b in skipped if b["path"] == e["file"]), None)
        if entry is None:
            entry = {"path": e["file"], "error": e["error"], "parts": []}
            skipped.append(entry)
        entry.setdefault("parts", []).append(i)
    totals["skipped_files"] = skipped
    ents: dict[str, int] = {}
    for r in per_rank:
        for k, v in r["entities"].items():
            ents[k] = ents.get(k, 0) + v
    wall = max(r["wall_s"] for r in per_rank)
    tag_s = max(r["tag_s"] for r in per_rank)
    words = sum(r["words"] for r in per_rank)
    this_run = {
        "rows": sum(r["rows"] for r in per_rank), "words": words, "entities": dict(sorted(ents.items())),
        "entities_total": sum(ents.values()), "parts": sum(r["parts"] for r in per_rank),
        "parts_stolen": sum(r.get("parts_stolen", 0) for r in per_rank),
        "parts_bad": sum(r.get("parts_bad", 0) for r in per_rank),
        "wall_s": wall, "tag_s": tag_s, "words_per_s": round(words / max(wall, 1e-9), 1),
        "tag_words_per_s": round(words / max(tag_s, 1e-9), 1),
        "padding_efficiency": round(sum(r["pieces"] for r in per_rank) / max(1, sum(r["padded_pieces"]
                                                                                    for r in per_rank)), 4),
        "world_size": info.world_size, "num_shards": num_shards, "shard_index": shard_index,
        "ranks": per_rank,
    }
    return {"output": fs.abspath(opts.output), "model": os.path.abspath(opts.model), "this_run": this_run,
            "total": totals, "finished_at": time.time()}


def exit_status(summary: dict) -> tuple[int, list[str]]:
    """The exit code and the lines that explain it: 5 when parts are left that this process gave up waiting
    for (held by live others), 4 when input files (or parts of them) were skipped as bad, else 0."""
    lines, code = [], 0
    t = summary["total"]
    left = summary.get("this_process", {}).get("left") or []
    if left:
        held = ", ".join(f"part {x['part']} ({x['holder'] or 'holder unknown'})" for x in left[:10])
        lines.append(f"ner-tag: incomplete: {len(left)} part(s) not finished: {held}"
                     f"{' ...' if len(left) > 10 else ''}; live processes hold them and may still finish them; "
                     "run the same command again to take over what is left")
        code = EXIT_INCOMPLETE
    if t.get("skipped_files"):
        first = t["skipped_files"][0]
        where = os.path.join(summary["output"], SUMMARY_FILE)
        lines.append(f"ner-tag: {len(t['skipped_files'])} input file(s) skipped ({t.get('parts_bad', 0)} part(s) "
                     f"unreadable), listed with their errors in {where}; the first: {first['error']}; repair or "
                     "remove them and run again to tag just those")
        code = code or EXIT_BAD_FILES
    return code, lines


def format_summary(summary: dict) -> str:
    r, t = summary["this_run"], summary["total"]
    lines = [
        f"tagged {r['rows']:,} rows, {r['words']:,} words, {r['entities_total']:,} entities "
        f"in {r['wall_s']:.1f} s ({r['words_per_s']:,.0f} words/s; {r['tag_words_per_s']:,.0f} words/s "
        f"while tagging; padding efficiency {r['padding_efficiency']:.0%})",
        "entities per type: " + (", ".join(f"{k} {v:,}" for k, v in r["entities"].items()) or "none"),
        f"output: {t['parts_done']}/{t['parts_total']} parts done, {t['rows']:,} rows"
        + (" (complete)" if t["complete"] else f" (incomplete: {len(t.get('parts_left', []))} left, "
                                                f"{t.get('parts_bad', 0)} bad)"),
        f"summary: {fs.join(summary['output'], SUMMARY_FILE)}",
    ]
    return "\n".join(lines)
