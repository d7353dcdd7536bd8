"""``ner-tag`` / ``python -m infer`` / ``torchrun -m infer``: tag raw texts in Parquet with a trained export.

    ner-tag --model runs/bert/export --input corpus/*.parquet --output tagged/ \\
        [--text-column text] [--id-column id] [--keep-columns a,b] [--batch-tokens N] \\
        [--device auto|cpu|cuda] [--precision auto|fp32|bf16|fp16] [--overwrite] \\
        [--num-shards N --shard-index I] [--rows-per-part N] [--on-bad-file fail|skip]

Output: OUT/part-NNNNNN.parquet, one row per input row in input order, with the
carried columns (default: every input column except the text; with --id-column
and/or --keep-columns: exactly those) and ``entities: list<struct<start, end,
label, text, score>>`` (character offsets into the original text, end
exclusive; ``text == original[start:end]``).  Re-running the same command
resumes; see infer/runner.py for sharding (torchrun ranks, SLURM arrays).

Exit codes: 0 done; 2 bad input or options (one line); 4 the system refused a read or write
(one line naming the path); 5 parts are left that other live processes hold (see --wait-for-others);
6 some input files were skipped (--on-bad-file skip; listed in OUT/_summary.json); see docs/failures.md.
"""

from __future__ import annotations

import argparse
import os
import sys

from common.cli import OS_ERROR_EXIT, Parser, at_least, declared, device, os_error_line, text
from common.options import Allowed

# oneDNN keeps compiled kernels for up to 1024 tensor shapes by default; length-sorted batches bring many
# shapes, so a small cache keeps memory flat (set the variable yourself to override).
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")


def _columns(value: str) -> list[str]:
    columns = [c.strip() for c in value.split(",") if c.strip()]
    if not columns:
        raise argparse.ArgumentTypeError(f"expected column names separated by commas, got {value!r}")
    return columns


declared(_columns, Allowed(nonempty=True), ",", "columns")
_at_least = at_least


# long but flat: one declaration per flag, in the order --help lists them
def parse_args(argv=None):
    """The command line (``argv``: ``sys.argv[1:]`` when None)."""
    p = Parser(prog="ner-tag", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=text,
                   help="export folder written by ner-train (RUN/export), or a Hugging Face token-classification "
                        "model folder or hub id (IOB/IOB2/BIOES id2label)")
    p.add_argument("--input", required=True, nargs="+", type=text, metavar="PATH",
                   help="Parquet file(s), glob(s) or folder(s) (hive partitions become columns); also "
                        "s3://bucket/prefix/ and other object-store URIs (see infer/fs.py)")
    p.add_argument("--output", required=True, type=text, help="output folder (created; resumed when it exists), "
                   "or an object-store URI such as s3://bucket/tagged/")
    p.add_argument("--text-column", default="text", type=text, help="column with the raw text (default: text)")
    p.add_argument("--id-column", type=text, help="column carried first into the output (e.g. a document id)")
    p.add_argument("--keep-columns", type=_columns, metavar="A,B",
                   help="columns carried into the output; default: all but the text column "
                        "(when --id-column or --keep-columns is given, only those)")
    p.add_argument("--batch-tokens", type=_at_least(0, " (0: the default)"), default=0,
                   help="padded word pieces per batch, at least the model's window "
                        "(default: 4096 on CPU, 16384 on GPU)")
    p.add_argument("--device", default="auto", type=device, help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 (fp16 without bf16 support) on GPU; on CPU bf16 where the CPU has native "
                        "bf16 (AVX512-BF16/AMX), else fp32. fp32 for exact full-precision results")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an output folder made by another model, precision or input "
                        "(same model, precision and input: resume)")
    p.add_argument("--num-shards", type=_at_least(1), help="split the parts over N independent jobs "
                   "(default: SLURM_ARRAY_TASK_COUNT when set, else 1)")
    p.add_argument("--shard-index", type=_at_least(0), help="this job's shard (default: SLURM_ARRAY_TASK_ID "
                   "- SLURM_ARRAY_TASK_MIN when set, else 0)")
    p.add_argument("--rows-per-part", type=_at_least(1), default=10000,
                   help="rows per output part (whole row groups are merged up to this; default 10000)")
    p.add_argument("--buffer-rows", type=_at_least(1), default=4096,
                   help="rows sorted by length together (bounds memory; default 4096)")
    p.add_argument("--buffer-chars", type=_at_least(1), default=2_000_000,
                   help="characters of text per buffer at most (default 2,000,000)")
    p.add_argument("--chunking", default="sentences", choices=["sentences", "windows"],
                   help="texts longer than the model's window: 'sentences' (default) cuts them at sentence "
                        "boundaries into chunks of up to --chunk-pieces word pieces; 'windows' leaves them to "
                        "the model's overlapping windows (more context at window edges, about twice the compute)")
    p.add_argument("--chunk-pieces", type=_at_least(0, " (0: the model's window)"), default=0,
                   help="largest chunk in word pieces (default 0: the model's window, or its packing size when "
                        "it was trained with document packing)")
    p.add_argument("--threads", type=_at_least(0, " (0: cores / local ranks)"), default=0,
                   help="torch CPU threads (default: cores / local ranks)")
    p.add_argument("--host-workers", type=_at_least(0, " (0: a thread of this process)"), default=None,
                   help="worker processes that prepare batches (words, pieces, windows) for the model; default: "
                        "NER_TAG_HOST_WORKERS, else 0 (a thread of this process)")
    p.add_argument("--word-probs", action="store_true",
                   help="also write each row's words and every word's probabilities over the labels (columns "
                        "words, word_probs): a teacher's output for distillation (training's data.teacher)")
    p.add_argument("--on-bad-file", choices=["fail", "skip"], default="fail",
                   help="an input file that cannot be read or whose columns do not fit: 'fail' (default) stops "
                        "with exit code 2; 'skip' tags every other file, lists it in OUT/_summary.json and the "
                        "manifest with its error and exits with code 6 (repair it and run again: only it is tagged)")
    p.add_argument("--wait-for-others", type=_at_least(0), default=None, metavar="SECONDS",
                   help="when only parts held by other live processes are left, wait this long for one of them "
                        "to finish (a part whose holder dies is taken over) before giving up with exit code 5 "
                        "(default 900)")
    p.add_argument("--pg-timeout", type=_at_least(1), default=None, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others in a collective (at the start: "
                        "loading the model, opening the folder) before the job fails (default 300)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    from common.distributed import setup_logging

    setup_logging(rank, args.log_level)
    from taggers.export import ExportError
    from taggers.loading import quiet_transformers

    from .output import OutputError
    from .options import PROCESS_GROUP_TIMEOUT_S, WAIT_FOR_OTHERS_S, TagOptions
    from .runner import run
    from .sources import InputError
    from .summary import exit_status, format_summary

    quiet_transformers()
    opts = TagOptions(
        model=args.model, inputs=args.input, output=args.output, text_column=args.text_column,
        id_column=args.id_column, keep_columns=args.keep_columns, batch_tokens=args.batch_tokens,
        device=args.device, precision=args.precision, overwrite=args.overwrite, num_shards=args.num_shards,
        shard_index=args.shard_index, rows_per_part=args.rows_per_part, buffer_rows=args.buffer_rows,
        buffer_chars=args.buffer_chars, chunking=args.chunking, chunk_pieces=args.chunk_pieces,
        threads=args.threads, host_workers=args.host_workers, word_probs=args.word_probs,
        progress=not args.no_progress, on_bad_file=args.on_bad_file,
        pg_timeout_s=args.pg_timeout or PROCESS_GROUP_TIMEOUT_S,
        wait_for_others_s=WAIT_FOR_OTHERS_S if args.wait_for_others is None else args.wait_for_others)
    try:
        summary = run(opts)
    except (InputError, OutputError, ExportError, ValueError) as e:
        print(f"ner-tag: error: {e}", file=sys.stderr)
        return _status(2, rank)
    except OSError as e:  # no space, file too large, permission, not a directory: finished parts are kept
        print(f"ner-tag: error: {os_error_line(e, args.output)}", file=sys.stderr)
        return _status(OS_ERROR_EXIT, rank)
    except RuntimeError as e:
        if "CUDA" not in str(e):
            raise
        import torch

        message = " ".join(str(e).split())  # CUDA errors span several lines
        if isinstance(e, torch.OutOfMemoryError):
            message = (f"the GPU ran out of memory with --batch-tokens {args.batch_tokens or 'default'}: rerun with "
                       "a smaller --batch-tokens (e.g. half, at least the model's window); finished parts are kept "
                       f"and the re-run resumes ({message.split('. ')[0]})")
        print(f"ner-tag: error: {message}", file=sys.stderr)
        return _status(2, rank)
    if rank == 0:
        print(format_summary(summary))
    code, lines = exit_status(summary)
    for line in lines if rank == 0 or code == 5 else []:  # parts left are this rank's own; the rest rank 0's
        print(line, file=sys.stderr)
    return _status(code, rank)


def _status(code: int, rank: int) -> int:
    """``code``, also written to ``NER_TAG_STATUS_FILE`` by rank 0 when set: torchrun turns any worker's
    non-zero exit into its own 1, and slurm/tag.sbatch reads the real one (2, 4, 5 or 6) from there."""
    path = os.environ.get("NER_TAG_STATUS_FILE")
    if path and rank == 0:
        try:
            with open(path, "w") as f:
                f.write(f"{code}\n")
        except OSError:
            pass
    return code


if __name__ == "__main__":
    sys.exit(main())
