"""The output stage of ``ner-tag``: span arrays to Arrow columns and Parquet parts, in a thread of its own.

The main thread runs the model and hands each buffer's spans (:class:`infer.tagger.FoundSpans`) here through a
bounded queue, so it never waits for Arrow or the disk unless the queue is full (which bounds memory).  One
thread takes the items in the order they were put, so results stay in input order; a part is renamed and
recorded in the manifest (:meth:`infer.parts.PartWriter.commit`) only when its last buffer is written, so a
kill -9 at any moment leaves finished parts and temporary files, and the next run resumes.  A failure here
stops the main thread at its next hand-over: a file system error becomes one ``OSError`` naming the output and
the part (exit code 4), anything else is raised as it is (a bug).
"""

from __future__ import annotations

import logging
import queue
import threading

import pyarrow as pa

from . import parts
from .memory import trim_malloc

log = logging.getLogger("infer")


class OutputStage:
    """Writes the parts of one ``_tag_parts`` call; ``stats`` (the run's) and each part's stats are kept here."""

    def __init__(self, tagger, out_dir: str, schema: pa.Schema, columns: list[str], word_probs: bool, stats,
                 new_stats, claims: dict, own=lambda part: True, depth: int = 2):
        self.tagger, self.out_dir, self.schema, self.columns = tagger, out_dir, schema, columns
        self.word_probs, self.stats, self.new_stats, self.claims = word_probs, stats, new_stats, claims
        self.own = own  # whether a part is of this process's own shard (else it was taken over: counted)
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.writer = None
        self.part = None
        self.thread = threading.Thread(target=self._loop, name="ner-tag-output", daemon=True)
        self.thread.start()

    # ---------------------------------------------------------------- main thread
    def buffer(self, part, table, prep, found, distributions) -> None:
        """Queue one buffer's rows (``table``: the carried columns) and spans."""
        self._put(("buffer", part, table, prep, found, distributions))

    def bad(self, part, error: str) -> None:
        """Queue ``part`` as unreadable (``--on-bad-file skip``): recorded, not written."""
        self._put(("bad", part, None, error, None, None))

    def end(self, part) -> None:
        """Queue the end of ``part``: committed once everything queued before it is written."""
        self._put(("end", part, None, None, None, None))

    def finish(self) -> None:
        """Wait until everything queued is written; raises the stage's error, if any."""
        self._put(None)
        self.thread.join()
        self._raise()

    def abort(self) -> None:
        """Stop without committing what is not committed yet (its temporary file is removed)."""
        self.stop.set()
        self.thread.join()

    def _put(self, item) -> None:
        while True:
            self._raise()
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    # ---------------------------------------------------------------- its own thread
    def _loop(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    item = self.queue.get(timeout=0.2)
                except queue.Empty:
                    continue
                if item is None:
                    return
                self._handle(*item)
        except OSError as e:
            index = self.part.index if self.part is not None else "?"
            # an OSError still (exit code 4 at the command's edge), naming the output and the part
            self.error = OSError(e.errno, f"cannot write part {index}: {e.strerror or e}; finished parts are kept "
                                 "and a re-run resumes", f"--output {self.out_dir}")
        except BaseException as e:  # a bug: raised as it is in the main thread
            self.error = e
        finally:
            if self.writer is not None and (self.error is not None or self.stop.is_set()):
                self.writer.abort()
                self.writer = None

    def _handle(self, kind, part, table, prep, found, distributions) -> None:
        self.part = part
        if kind == "bad":
            if self.writer is not None:  # rows of the part's first buffers were written: dropped
                self.writer.abort()
                self.writer = None
            parts.record_bad_part(self.out_dir, part.to_json(), prep)
            self.claims.pop(part.index).close()
            self.stats.bad += 1
            log.warning("skipping part %d: %s", part.index, prep)
            return
        if self.writer is None:  # at the part's first buffer, or at its end for a part without rows
            self.writer = parts.PartWriter(self.out_dir, part.to_json(), self.schema)
            self.part_stats = self.new_stats()
        if kind == "end":
            entry = self.writer.commit(self.part_stats.as_dict())
            self.writer = None
            log.debug("part %d done: %s", part.index, entry)
            self.claims.pop(part.index).close()
            self.stats.parts += 1
            self.stats.stolen += not self.own(part)
            return
        tagged = self.tagger.entities(prep, found, distributions)
        arrays = [table.column(c) for c in self.columns] + [tagged.to_arrow()]
        if self.word_probs:
            arrays += [tagged.words, tagged.word_probs]
        self.writer.write(pa.Table.from_arrays(arrays, schema=self.schema))
        counts = tagged.counts()
        for s in (self.stats, self.part_stats):
            s.rows += prep.num_rows
            s.words += prep.num_words
            s.pieces += prep.num_pieces
            s.padded += prep.padded_pieces
            s.add_entities(counts)
        del prep, tagged, table, arrays
        trim_malloc()
