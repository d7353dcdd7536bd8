"""The figures of a ``ner-tag`` run: per process (:class:`Stats`), the summary (``OUT/_summary.json``: this run's
figures over every rank, the folder's totals from the manifest), the exit status it implies and the lines
printed at the end.
"""

from __future__ import annotations

import os
import time

from common.tagdir import SUMMARY_FILE

from . import fs
from .parts import done_parts, read_bad_parts, read_manifest

EXIT_BAD_FILES = 6
EXIT_INCOMPLETE = 5


class Stats:
    """A process's figures (and a part's, kept by the output stage)."""

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


def build_summary(out_dir: str, model: str, per_rank: list[dict], plan: list[dict], bad_files: list[dict], info,
                  num_shards: int, shard_index: int) -> dict:
    """The summary: this run's figures over ``per_rank`` (every rank's :func:`process_figures`) and the folder's
    totals, read from the manifest (so the last SLURM array task to finish writes the complete totals)."""
    totals = _totals(out_dir, plan, bad_files)
    this_run = _this_run(per_rank, info, num_shards, shard_index)
    return {"output": fs.abspath(out_dir), "model": os.path.abspath(model), "this_run": this_run,
            "total": totals, "finished_at": time.time()}


def write_summary(out_dir: str, summary: dict) -> None:
    fs.write_json(fs.join(out_dir, SUMMARY_FILE), summary)


def process_figures(stats: Stats, t0: float, t_tag: float, t_end: float, **about) -> dict:
    """This process's figures for the summary: ``stats``, its wall and tagging seconds and words/s, and
    ``about`` (its rank, shard, device, precision, threads, host workers)."""
    return {**stats.as_dict(), "wall_s": round(t_end - t0, 3), "tag_s": round(t_end - t_tag, 3),
            "words_per_s": round(stats.words / max(t_end - t_tag, 1e-9), 1), **about}


def _totals(out_dir: str, plan: list[dict], bad_files: list[dict]) -> dict:
    manifest = read_manifest(out_dir)
    done = done_parts(out_dir, plan)
    bad_parts = read_bad_parts(out_dir, plan)
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
    return totals


def _this_run(per_rank: list[dict], info, num_shards: int, shard_index: int) -> dict:
    ents: dict[str, int] = {}
    for r in per_rank:
        for k, v in r["entities"].items():
            ents[k] = ents.get(k, 0) + v
    wall = max(r["wall_s"] for r in per_rank)
    tag_s = max(r["tag_s"] for r in per_rank)
    words = sum(r["words"] for r in per_rank)
    return {
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


def exit_status(summary: dict) -> tuple[int, list[str]]:
    """The exit code and the lines that explain it: 5 when parts are left that this process gave up waiting
    for (held by live others), 6 when input files (or parts of them) were skipped as bad, else 0."""
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
