"""The batch tagging job: plan, shard, stream, tag, write, resume, summarise.

One process (or each torchrun rank / SLURM array task) does:

1. find the input files and plan the parts (:mod:`infer.sources`);
2. load the model (before the output folder is touched: a broken export must
   not leave a folder that then refuses the fixed one);
3. check or initialise the output folder under a file lock (:mod:`infer.output`):
   same model, precision and input -> resume, skipping finished parts;
   otherwise refuse (or clear with ``--overwrite``);
4. tag the unfinished parts of its shard: part ``i`` belongs to shard
   ``i % num_shards`` (``--num-shards/--shard-index`` or the SLURM array; not
   the torchrun world size, so a task re-run with another GPU count covers
   the same parts).  The ranks of one task share its parts by claiming each
   part before reading it (:func:`infer.output.claim_part`); a part claimed by
   a live process is left to it;
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
   and written to ``OUT/_summary.json`` (under torchrun by rank 0, after all
   ranks finished; in a SLURM array by every task, the totals read from the
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
from common.io import write_json
from common.teacher import TEACHER_LABELS_KEY

from . import output as out_utils
from .sources import InputError, discover, plan_parts, read_buffers
from taggers.export import ExportError, load_tagger, read_export_config
from taggers.precision import resolve_precision

from .host_workers import HostWorkers
from .memory import bound_malloc
from .output_stage import OutputStage
from .tagger import ENTITIES_TYPE, WORDS_TYPE, TextTagger, word_probs_type

log = logging.getLogger("infer")

PROCESS_GROUP_TIMEOUT_S = 30 * 60
"""How long a rank waits for its peers in a collective before the job fails (the summary gathers once, at
the end: a rank that finished early waits for the slowest; one that died brings the job down via torchrun)."""


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


def carried_columns(opts: TagOptions) -> list[str] | None:
    """``None`` (every non-text column) unless --id-column / --keep-columns name them."""
    if opts.id_column is None and opts.keep_columns is None:
        return None
    cols = ([opts.id_column] if opts.id_column else []) + list(opts.keep_columns or [])
    return list(dict.fromkeys(cols))


def shard_from_env(num_shards: int | None, shard_index: int | None) -> tuple[int, int]:
    """``--num-shards/--shard-index``, else a SLURM array's task count and index, else (1, 0)."""
    if num_shards is None and "SLURM_ARRAY_TASK_COUNT" in os.environ and "SLURM_ARRAY_TASK_ID" in os.environ:
        num_shards = int(os.environ["SLURM_ARRAY_TASK_COUNT"])
        if shard_index is None:
            shard_index = int(os.environ["SLURM_ARRAY_TASK_ID"]) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
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
        self.parts = 0

    def add_entities(self, counts: dict[str, int]):
        for k, v in counts.items():
            self.entities[k] = self.entities.get(k, 0) + v

    def as_dict(self) -> dict:
        return {"rows": self.rows, "words": self.words, "pieces": self.pieces, "padded_pieces": self.padded,
                "entities": dict(sorted(self.entities.items())), "parts": self.parts}


def _producer(tagger: TextTagger, work, sources, columns, opts, claims: dict, q: queue.Queue,
              stop: threading.Event, workers: "HostWorkers | None" = None):
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
        for part in work:
            claim = out_utils.claim_part(opts.output, part.index)
            if claim is None or out_utils.part_done(opts.output, part.to_json()):
                if claim is not None:
                    claim.close()
                if not put(("skip", part, None, None)):  # another process has it, or just finished it
                    return
                continue
            claims[part.index] = claim  # released by the main thread once the part is committed
            src = sources[part.source]
            for table, texts in read_buffers(src, part, columns, opts.text_column, opts.buffer_rows,
                                             opts.buffer_chars):
                if stop.is_set():
                    return
                prep = (workers.submit(texts), texts) if workers is not None else tagger.prepare(texts)
                if not put(("buffer", part, table, prep)):
                    return
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
    info = distributed.setup(opts.device, timeout_s=PROCESS_GROUP_TIMEOUT_S) if world > 1 else \
        distributed.DistInfo(device=distributed.resolve_device(opts.device))
    completed = False
    try:
        summary = _run(opts, info, t0)
        completed = True
        return summary
    finally:
        if world > 1:
            distributed.teardown(completed)


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
    sources, columns = discover(opts.inputs, opts.text_column, carried_columns(opts))
    out_abs = os.path.abspath(opts.output)
    for spec in opts.inputs:
        if os.path.isdir(spec) and (out_abs + os.sep).startswith(os.path.abspath(spec) + os.sep):
            raise InputError(f"--output {opts.output} is inside the input folder {spec}; its parts would "
                             "be read as input next time. Choose an output folder outside the input.")
    parts = plan_parts(sources, opts.rows_per_part)
    plan = [p.to_json() for p in parts]
    files = [{"path": os.path.abspath(s.path), "size": os.path.getsize(s.path), "rows": s.num_rows}
             for s in sources]
    input_options = {"text_column": opts.text_column, "columns": columns, "rows_per_part": opts.rows_per_part,
                     "chunking": opts.chunking, "chunk_pieces": opts.chunk_pieces, "word_probs": opts.word_probs}
    precision = resolve_precision(opts.precision, info.device)  # "auto" and what it resolves to are the same
    run_info = {
        "format": out_utils.RUN_FORMAT, "tool": "ner-tag",
        "model": {"path": os.path.abspath(opts.model), "fingerprint": out_utils.model_fingerprint(opts.model),
                  "model_type": meta["model_type"], "labels": meta["labels"], "precision": precision},
        "input": {"fingerprint": out_utils.input_fingerprint(files, input_options), "files": files,
                  **input_options},
        "parts": plan, "created": time.time(),
    }
    tagger = _same_on_every_rank(lambda: _load_tagger(opts, info.device, precision), info)
    _same_on_every_rank(lambda: out_utils.open_folder(opts.output, run_info, opts.overwrite), info)

    done = out_utils.done_parts(opts.output, plan)
    work = [p for p in parts if p.index % num_shards == shard_index and p.index not in done]
    my_rows = sum(p.num_rows for p in work)
    log.info("%d parts planned, %d already done; shard %d/%d has %d parts (%d rows) to do, shared by %d "
             "process(es)", len(parts), len(done), shard_index, num_shards, len(work), my_rows, info.world_size)

    stats = _Stats()
    t_tag = time.time()
    if work:
        _tag_parts(tagger, work, sources, columns, opts, stats, show=opts.progress and info.is_main,
                   total_rows=my_rows)
    t_end = time.time()
    this = {**stats.as_dict(), "wall_s": round(t_end - t0, 3), "tag_s": round(t_end - t_tag, 3),
            "words_per_s": round(stats.words / max(t_end - t_tag, 1e-9), 1),
            "rank": info.rank, "shard": shard_index, "device": str(info.device), "precision": precision,
            "threads": threads, "host_workers": host_workers(opts)}
    per_rank = distributed.gather_objects(this, info)
    summary = _summary(opts, per_rank, len(parts), t0, info, num_shards, shard_index)
    if info.is_main:
        write_json(os.path.join(opts.output, out_utils.SUMMARY_FILE), summary)
    return summary


def _tag_parts(tagger: TextTagger, work, sources, columns, opts, stats: _Stats, show: bool, total_rows: int):
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
    thread = threading.Thread(target=_producer, args=(tagger, work, sources, columns, opts, claims, q, stop, workers),
                              name="ner-tag-prepare", daemon=True)
    thread.start()
    bar = tqdm(total=total_rows, unit="rows", disable=not show, dynamic_ncols=True, smoothing=0.05,
               file=sys.stderr)
    out = OutputStage(tagger, opts.output, schema, columns, opts.word_probs, stats, _Stats, claims)
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
            if kind == "skip":  # counted as done for the bar: its holder tags it
                bar.update(part.num_rows)
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
        for claim in claims.values():  # parts not finished: free for the next run
            claim.close()


def _summary(opts, per_rank: list[dict], parts_total: int, t0: float, info, num_shards, shard_index) -> dict:
    manifest = out_utils.read_manifest(opts.output)
    totals = {"rows": 0, "words": 0, "entities": {}}
    for e in manifest.values():
        totals["rows"] += e.get("num_rows", 0)
        totals["words"] += e.get("words", 0)
        for k, v in e.get("entities", {}).items():
            totals["entities"][k] = totals["entities"].get(k, 0) + v
    totals["entities"] = dict(sorted(totals["entities"].items()))
    totals["parts_done"] = len(manifest)
    totals["parts_total"] = parts_total
    totals["complete"] = len(manifest) >= parts_total
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
        "wall_s": wall, "tag_s": tag_s, "words_per_s": round(words / max(wall, 1e-9), 1),
        "tag_words_per_s": round(words / max(tag_s, 1e-9), 1),
        "padding_efficiency": round(sum(r["pieces"] for r in per_rank) / max(1, sum(r["padded_pieces"]
                                                                                    for r in per_rank)), 4),
        "world_size": info.world_size, "num_shards": num_shards, "shard_index": shard_index,
        "ranks": per_rank,
    }
    return {"output": os.path.abspath(opts.output), "model": os.path.abspath(opts.model), "this_run": this_run,
            "total": totals, "finished_at": time.time()}


def format_summary(summary: dict) -> str:
    r, t = summary["this_run"], summary["total"]
    lines = [
        f"tagged {r['rows']:,} rows, {r['words']:,} words, {r['entities_total']:,} entities "
        f"in {r['wall_s']:.1f} s ({r['words_per_s']:,.0f} words/s; {r['tag_words_per_s']:,.0f} words/s "
        f"while tagging; padding efficiency {r['padding_efficiency']:.0%})",
        "entities per type: " + (", ".join(f"{k} {v:,}" for k, v in r["entities"].items()) or "none"),
        f"output: {t['parts_done']}/{t['parts_total']} parts done, {t['rows']:,} rows"
        + (" (complete)" if t["complete"] else " (incomplete: run again, or run the other shards)"),
        f"summary: {os.path.join(summary['output'], out_utils.SUMMARY_FILE)}",
    ]
    return "\n".join(lines)
