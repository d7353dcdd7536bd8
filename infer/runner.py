"""The batch tagging job: plan, shard, stream, tag, write, resume, summarise.

One process (or each torchrun rank / SLURM array task) does:

1. find the input files and plan the parts (:mod:`infer.sources`); the options
   and what follows from them (shard, threads, host workers) are :mod:`infer.options`;
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
   length-sorted token-budget batches:
   :class:`infer.host_encoder.HostEncoder`) while the main thread runs the
   model on the previous buffer and decodes the spans (on the model's device),
   and an output thread (:mod:`infer.output_stage`) turns them into Arrow
   columns and writes them; or, with host worker processes
   (:func:`infer.options.host_workers`: by default beside a GPU, not on a CPU,
   whose model needs every core), the thread hands each buffer to a worker
   (round robin) and the main thread collects the results in input order
   (pinned tensors on a GPU).  The queue between them holds at most two
   buffers (plus one per worker), so memory does not grow with the corpus;
6. results go, in input order, into the part's temporary Parquet file, which
   is renamed and recorded in the manifest when the part is complete;
7. a summary (rows, words, entities per type, wall time, words/s:
   :mod:`infer.summary`) is printed and written to ``OUT/_summary.json``
   (under torchrun by rank 0, once every rank has posted its figures to the
   process group's store: polled, not a collective, so a rank that finished
   early never meets the process-group timeout; in a SLURM array by every
   task, the totals read from the manifest, so the last task to finish writes
   the complete totals).
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

from common import distributed
from common.teacher import TEACHER_LABELS_KEY
from taggers.export import ExportError, load_tagger, read_export_config
from taggers.precision import resolve_precision

from . import fs
from . import output as out_utils
from . import shares
from .host_workers import HostWorkers
from .memory import bound_malloc
from .options import TagOptions, carried_columns, host_workers, set_threads, shard_from_env
from .output_stage import OutputStage
from .parts import done_parts, record_skipped_files
from .sources import InputError, discover, plan_parts, read_buffers
from .summary import Stats, build_summary, process_figures, write_summary
from .tagger import ENTITIES_TYPE, WORDS_TYPE, TextTagger, word_probs_type

log = logging.getLogger("infer")


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


@dataclass
class _Job:
    """What :func:`_plan` found: the input files and columns, the parts, and the folder's ``_run.json``."""
    sources: list
    columns: list[str]
    parts: list
    plan: list[dict]
    bad_files: list[dict] | None
    precision: str
    run_info: dict


def _plan(opts: TagOptions, device) -> _Job:
    """Find the input files (bad ones listed with ``--on-bad-file skip``), plan the parts and describe the
    run for ``_run.json``: model, precision, input fingerprints and options, the part plan."""
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
    precision = resolve_precision(opts.precision, device)  # "auto" and what it resolves to are the same
    run_info = {
        "format": out_utils.RUN_FORMAT, "tool": "ner-tag",
        "model": {"path": os.path.abspath(opts.model), "fingerprint": out_utils.model_fingerprint(opts.model),
                  "model_type": meta["model_type"], "labels": meta["labels"], "precision": precision},
        "input": {"fingerprint": out_utils.input_fingerprint(files, input_options),
                  "options_fingerprint": out_utils.options_fingerprint({**input_options, "types": column_types}),
                  "files": files, "bad_files": bad_files or [], **input_options},
        "parts": plan, "created": time.time(),
    }
    return _Job(sources, columns, parts, plan, bad_files, precision, run_info)


def _run(opts: TagOptions, info, t0: float) -> dict:
    num_shards, shard_index = shard_from_env(opts.num_shards, opts.shard_index)
    threads = set_threads(opts, info.device)
    job = _plan(opts, info.device)
    tagger = _same_on_every_rank(lambda: _load_tagger(opts, info.device, job.precision), info)
    _same_on_every_rank(lambda: out_utils.open_folder(opts.output, job.run_info, opts.overwrite), info)
    if info.is_main:  # (without skip, a bad file stopped the run above: none is left out)
        record_skipped_files(opts.output, job.bad_files or [])

    done = done_parts(opts.output, job.plan)
    work = [p for p in shares.work_order(job.parts, num_shards, shard_index) if p.index not in done]
    own = sum(p.index % num_shards == shard_index for p in work)
    log.info("%d parts planned, %d already done; %d to do (%d of shard %d/%d first, then the others' not taken "
             "by their own tasks), shared by %d process(es)", len(job.parts), len(done), len(work), own,
             shard_index, num_shards, info.world_size)

    stats = Stats()
    t_tag = time.time()
    if work:
        _tag_parts(tagger, work, job.sources, job.columns, opts, stats, show=opts.progress and info.is_main,
                   total_rows=sum(p.num_rows for p in work), own=lambda p: p.index % num_shards == shard_index)
    t_end = time.time()
    this = process_figures(stats, t0, t_tag, t_end, rank=info.rank, shard=shard_index, device=str(info.device),
                           precision=job.precision, threads=threads, host_workers=host_workers(opts))
    per_rank = shares.gather_on_rank0(this, info)
    summary = build_summary(opts.output, opts.model, per_rank or [this], job.plan, job.bad_files or [], info,
                            num_shards, shard_index)
    summary["this_process"] = {"left": stats.left, "rank": info.rank}
    if per_rank is not None:  # rank 0 (or the only process): it has every rank's figures
        write_summary(opts.output, summary)
    return summary


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



def _output_schema(tagger: TextTagger, sources, columns, word_probs: bool) -> pa.Schema:
    """The parts' schema: the carried columns, ``entities`` and, with ``--word-probs``, ``words`` and
    ``word_probs`` (the labels' order in the metadata)."""
    fields = [sources[0].schema.field(c) for c in columns] + [pa.field("entities", ENTITIES_TYPE)]
    if word_probs:
        fields += [pa.field("words", WORDS_TYPE), pa.field("word_probs", word_probs_type(len(tagger.labels)))]
    return pa.schema(fields, metadata={TEACHER_LABELS_KEY: json.dumps(tagger.labels)} if word_probs else None)


def _tag_parts(tagger: TextTagger, work, sources, columns, opts, stats: Stats, show: bool, total_rows: int,
               own=lambda part: True):
    from tqdm import tqdm

    schema = _output_schema(tagger, sources, columns, opts.word_probs)
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
    out = OutputStage(tagger, opts.output, schema, columns, opts.word_probs, stats, Stats, claims, own)
    t_start = time.time()
    failed = True
    try:
        _consume(q, tagger, workers, out, bar, stats, opts.word_probs, t_start)
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


def _consume(q: queue.Queue, tagger: TextTagger, workers: "HostWorkers | None", out: OutputStage, bar, stats: Stats,
             word_probs: bool, t_start: float) -> None:
    """The main thread's side of :func:`_tag_parts`: the producer's items in order, the model run on each
    buffer and its spans handed to the output stage, until the producer's end (its error is raised here)."""
    while True:
        item = q.get()
        if item is None:
            return
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
        found, distributions = tagger.run_spans(prep, word_probs)
        prep.batches = []  # the output stage needs the words and texts only
        out.buffer(part, table, prep, found, distributions)
        bar.update(prep.num_rows)
        bar.set_postfix_str(f"{stats.words / max(time.time() - t_start, 1e-9):,.0f} words/s", refresh=False)
        del prep, found, distributions, table
