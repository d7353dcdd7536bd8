"""The evaluation sets of a report (``--data``, repeatable) and the scoring of every run on each of them.

``--data [NAME=]PATH[#FOLD]`` names a labelled data set (JSON or CoNLL folder); NAME defaults to the file or
folder name, FOLD to ``--fold`` (so ``--data test=DATA.json --data valid=DATA.json#valid`` scores two folds of
one file).  Without ``--data`` the one set is the data path
recorded in the first run's config (or none: saved predictions are scored as they are).

Which predictions are scored on a set:

* the run's *home* set, where its saved ``predictions/{fold}.jsonl`` apply, is the set whose path is the
  run's ``data.path`` (:meth:`common.rundir.RunFolder.data_path`); when no set has that path (or none is
  recorded) it is the first set -- so a one-set report scores saved predictions as before;
* on any other set, and on the home set when there are no saved predictions, the run's export tags the
  fold; a run without an export is not scored on its non-home sets (the report says so).

The scoring rule, the same for every set and every model, saved predictions or tagged
(:data:`SCORING_RULE`): all gold and all predicted entities count, as conlleval counts them.  A model whose
labels lack a type the set annotates misses those entities (its recall); entities it predicts of a type the
set does not annotate are false positives (its precision).  Both, per model, are stated in the report.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Sequence

from common.data import DataError, Sentence, load_folds, split_tag
from common.rundir import RunFolder

from .analysis import analyse, training_entities
from .runs import ReportError, RunData, check_against_data, data_path_of_runs, load_run
from .stats import add_statistics

log = logging.getLogger(__name__)

SCORING_RULE = ("Every set is scored the same way for every model, from saved predictions or tagged by the "
                "export: on all its gold entities and all predicted ones, as conlleval counts them; entities of "
                "a type a model lacks count as missed, and predicted entities of a type the set does not "
                "annotate count as false positives.")


@dataclass
class EvalSet:
    name: str
    path: str | None                      # None: no data given or recorded
    sentences: list[Sentence] | None      # the scored fold
    seen: set | None = None               # entities of the train fold (seen/unseen breakdown)
    types: list[str] | None = None        # entity types annotated in the loaded folds
    fold: str = "test"                    # the fold of the set that is scored


@dataclass
class SetResult:
    """The runs of one set, scored: ``an`` is :func:`report.analysis.analyse` plus :mod:`report.stats`."""

    set: EvalSet
    runs: list[RunData]
    an: dict | None                       # None when no run could be scored on the set
    not_scored: dict[str, str] = field(default_factory=dict)   # run name -> why
    scored_types: list[str] | None = None          # the set's types; None: every model has exactly those
    left_out: dict = field(default_factory=dict)   # {"not_in_models": {T: [runs]}, "not_in_set": {T: [runs]}}

    @property
    def name(self) -> str:
        return self.set.name


# --- the sets ------------------------------------------------------------------------------------------

def parse_data_spec(value: str) -> tuple[str | None, str]:
    """``"NAME=PATH"`` -> ``(NAME, PATH)``; a plain path (also one that exists and holds ``=``) -> ``(None, PATH)``.

    PATH may end in ``#FOLD`` (see :func:`split_fold`)."""
    if "=" in value and not os.path.exists(value):
        name, path = value.split("=", 1)
        if name and path and "/" not in name and os.sep not in name:
            return name, path
    return None, value


def split_fold(path: str, default: str) -> tuple[str, str]:
    """``"DATA.json#valid"`` -> ``("DATA.json", "valid")``; a path without ``#FOLD`` (or one that exists) keeps
    ``default``."""
    base, sep, fold = path.rpartition("#")
    if sep and base and fold and not os.path.exists(path):
        return base, fold
    return path, default


def set_names(specs: Sequence[tuple[str | None, str]]) -> list[str]:
    """Given names, else the file or folder name; repeated default names get ``_2``, ``_3``..."""
    given = [n for n, _ in specs if n]
    if len(set(given)) != len(given):
        raise ReportError(f"--data: a set name is given twice ({', '.join(sorted(given))})")
    names: list[str] = []
    for name, path in specs:
        if name:
            names.append(name)
            continue
        base = os.path.basename(os.path.normpath(path)) or path
        name, k = base, 2
        while name in names or name in given:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def load_set(name: str, spec: str, default_fold: str) -> EvalSet:
    """Load the fold (``#FOLD`` of ``spec``, else ``default_fold``) and the train fold, when there is one, of a
    labelled data set."""
    path, fold = split_fold(spec, default_fold)
    wanted = tuple(dict.fromkeys(["train", fold]))
    try:
        folds = load_folds(path, wanted)
    except DataError:
        folds = load_folds(path, (fold,))
        log.warning("%s: no train fold; seen/unseen breakdown skipped", path)
    seen = training_entities((s.tokens, s.tags) for s in folds["train"]) if "train" in folds else None
    types = sorted({split_tag(t)[1] for sents in folds.values() for s in sents for t in s.tags if t != "O"})
    return EvalSet(name, path, folds[fold], seen, types, fold)


def load_sets(data: Sequence[str] | None, runs: Sequence[str], fold: str) -> list[EvalSet]:
    """The evaluation sets of ``--data`` (in order), or the data path recorded by the runs, or no data."""
    if not data:
        path = data_path_of_runs(runs)
        if not path:
            return [EvalSet("saved predictions", None, None, fold=fold)]
        data = [path]
    specs = [parse_data_spec(v) for v in data]
    return [load_set(name, path, fold) for name, (_, path) in zip(set_names(specs), specs)]


def _same_path(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def home_set(run_path: str, sets: Sequence[EvalSet]) -> int:
    """Index of the set the run's saved predictions apply to (see the module docstring)."""
    run = RunFolder(run_path)
    try:
        recorded = run.data_path() if os.path.isdir(run_path) else None
    except ValueError as e:
        raise ReportError(f"{run.config_path}: {e}") from None
    if recorded:
        for i, s in enumerate(sets):
            if s.path and _same_path(recorded, s.path):
                return i
    return 0


def export_types(run_path: str) -> list[str] | None:
    """Entity types of the run's export labels (None when they cannot be read)."""
    from taggers.export import read_export_config

    try:
        labels = read_export_config(RunFolder(run_path).export_dir)["labels"]
    except Exception as e:  # noqa: BLE001 - then tagging fails too, with the reason
        log.warning("%s: cannot read the export's labels: %s", run_path, e)
        return None
    return sorted({split_tag(t)[1] for t in labels if t != "O"})


def model_types(run_path: str) -> list[str] | None:
    """Entity types a run's model knows: its export's labels, else the labels in its metrics.json."""
    if RunFolder(run_path).has_export():
        return export_types(run_path)
    try:
        labels = RunFolder(run_path).read_metrics().get("labels")
    except (OSError, ValueError):
        return None
    return sorted({split_tag(t)[1] for t in labels if t != "O"}) if isinstance(labels, list) else None


# --- the scoring rule ----------------------------------------------------------------------------------

def scored_types(set_types: Sequence[str] | None, model_types: dict[str, Sequence[str]]
                 ) -> tuple[list[str] | None, dict]:
    """``(types scored, differences)`` of a set under :data:`SCORING_RULE`, given each model's types.

    ``(None, {})`` when every model has exactly the set's types.  Otherwise every type the set annotates is
    scored, and the differences are ``{"not_in_models": {T: [models without T]} (counted as missed),
    "not_in_set": {T: [models with T]} (their predictions count as false positives)}``.
    """
    if set_types is None or not model_types:
        return None, {}
    annotated = set(set_types)
    not_in_models = {t: [n for n, ts in model_types.items() if t not in ts] for t in sorted(annotated)}
    not_in_models = {t: ns for t, ns in not_in_models.items() if ns}
    not_in_set: dict[str, list[str]] = {}
    for n, ts in model_types.items():
        for t in sorted(set(ts) - annotated):
            not_in_set.setdefault(t, []).append(n)
    if not not_in_models and not not_in_set:
        return None, {}
    return sorted(annotated), {"not_in_models": not_in_models, "not_in_set": dict(sorted(not_in_set.items()))}


def keep_types(tags: Sequence[str], keep: set[str]) -> list[str]:
    """Tags with the entities of other types made ``O`` (the kept entities' spans do not change)."""
    return [t if t == "O" or t.partition("-")[2] in keep else "O" for t in tags]


# --- scoring -------------------------------------------------------------------------------------------

def score_set(s: EvalSet, index: int, runs: Sequence[tuple[str, str, int]], args) -> SetResult:
    """Load (or tag) every run on set ``index`` and analyse them; ``runs`` are ``(path, name, home index)``."""
    loaded, not_scored, types_of = [], {}, {}
    for path, name, home in runs:
        if home == index:   # as a one-set report always did: saved predictions, else the export
            run = load_run(path, name, s.fold, s.sentences, args)
            check_against_data(run, s.sentences)
        elif not RunFolder(path).has_export():
            not_scored[name] = "its saved predictions are of another set and it has no export to tag this one"
            continue
        else:
            try:
                run = load_run(path, name, s.fold, s.sentences, args, saved=False)
            except ReportError as e:
                not_scored[name] = str(e)
                log.warning("%s not scored on set %s: %s", name, s.name, e)
                continue
        types = model_types(path)  # on every set alike: one scoring rule (SCORING_RULE)
        if types is not None:
            types_of[name] = types
        loaded.append(run)
    scored, left_out = scored_types(s.types, types_of)
    if not loaded:
        return SetResult(s, [], None, not_scored, scored, left_out)
    an = analyse(loaded, s.seen)
    an["data"] = s.path
    add_statistics(an, loaded, args.bootstrap, args.bootstrap_seed)
    return SetResult(s, loaded, an, not_scored, scored, left_out)


def score_sets(sets: Sequence[EvalSet], paths: Sequence[str], names: Sequence[str], args) -> list[SetResult]:
    """Every run scored on every set (the first set's analysis is the report's main one)."""
    homes = [home_set(p, sets) if len(sets) > 1 else 0 for p in paths]
    runs = list(zip(paths, names, homes))
    for path in paths:
        if not os.path.isdir(path):
            raise ReportError(f"{path}: not a run folder")
    results = [score_set(s, i, runs, args) for i, s in enumerate(sets)]
    if results[0].an is None:
        raise ReportError(f"no run could be scored on the first set {sets[0].name!r}: "
                          + "; ".join(f"{n}: {why}" for n, why in results[0].not_scored.items()))
    return results


def set_summary(r: SetResult) -> dict:
    """report.json's entry of one set (``sets.NAME``), without the per-model entries."""
    first = r.an["models"][r.runs[0].name] if r.an else None
    return {
        "path": r.set.path,
        "fold": r.set.fold,
        "sentences": first["sentences"] if first else len(r.set.sentences or []),
        "words": first["words"] if first else None,
        "gold_entities": first["errors"]["num_gold"] if first else None,
        "types_annotated": r.set.types,
        "types_scored": r.scored_types if r.scored_types is not None else (r.an["types"] if r.an else None),
        "left_out": r.left_out,
        "not_scored": r.not_scored,
        "sources": {run.name: run.source for run in r.runs},
    }
