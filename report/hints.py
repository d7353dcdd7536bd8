"""The improvement hints of ``ner-report``: from a model's scores, error classes and breakdowns
(:func:`report.analysis.analyse`), a sentence each on where its errors are and which lever fits them, and one
on what two models' disagreements say.  Plain data in, text out: unit-testable with known answers."""

from __future__ import annotations

from .errors import (CLASS_LABELS, ERROR_CLASSES, MISSED, SPURIOUS, WRONG_BOUNDARY, WRONG_TYPE,
                     WRONG_TYPE_BOUNDARY)
from .render import md_escape


# --- improvement hints ---------------------------------------------------------------------------

def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def improvement_hints(models: dict[str, dict]) -> list[str]:
    """Short, data-derived hints, one sentence each, numbers included.

    ``models[name]`` is the per-model entry of report.json (``scores``,
    ``errors``, ``confusion``, ``breakdowns``).  A hint is only emitted when
    its condition holds in the data.
    """
    hints: list[str] = []
    for raw_name, m in models.items():
        name = md_escape(raw_name)
        for hint in _HINTS:
            text = hint(m)
            if text:
                hints.append(f"**{name}**: {text}")
    return hints


def _error_class_hint(m: dict) -> str | None:
    """The two largest error classes, with advice on the largest."""
    err = m["errors"]
    n_err = err["errors"]
    if not n_err:
        return None
    ranked = sorted(ERROR_CLASSES, key=lambda c: -err["outcomes"][c])
    top, second = ranked[0], ranked[1]
    return (f"the largest error class is *{CLASS_LABELS[top]}* with {err['outcomes'][top]:,} of "
            f"{n_err:,} errors ({_pct(err['outcomes'][top] / n_err)}%), then *{CLASS_LABELS[second]}* with "
            f"{err['outcomes'][second]:,} ({_pct(err['outcomes'][second] / n_err)}%)" + _class_advice(top) + ".")


def _weakest_type_hint(m: dict) -> str | None:
    """The entity type with the lowest F1, and whether it is missed or over-predicted."""
    sc = m["scores"]
    per_type = {t: v for t, v in sc["per_type"].items() if v.get("support", 0) > 0}
    if len(per_type) <= 1:
        return None
    weakest = min(per_type, key=lambda t: per_type[t]["f1"])
    w = per_type[weakest]
    side = ("it is missed more than over-predicted (recall below precision)" if w["recall"] < w["precision"]
            else "it is over-predicted more than missed (precision below recall)")
    return (f"the weakest type is {weakest} (F1 {_pct(w['f1'])} vs {_pct(sc['f1'])} overall, "
            f"P {_pct(w['precision'])} / R {_pct(w['recall'])}, {w['support']:,} gold entities); {side}.")


def _confusion_hint(m: dict) -> str | None:
    """The most frequent confusion of one gold type for another (at least twice)."""
    conf = m.get("confusion")
    if not conf:
        return None
    best = None
    for r, row in enumerate(conf["rows"][:-1]):
        for c, col in enumerate(conf["cols"][:-1]):
            if row != col and conf["matrix"][r][c] and (best is None or conf["matrix"][r][c] > best[0]):
                best = (conf["matrix"][r][c], row, col)
    if not (best and best[0] >= 2):
        return None
    gold_n = sum(conf["matrix"][conf["rows"].index(best[1])])
    return (f"the most frequent type confusion is gold {best[1]} predicted as {best[2]} "
            f"({best[0]:,} times, {_pct(best[0] / gold_n)}% of gold {best[1]} entities).")


def _unseen_hint(m: dict) -> str | None:
    """F1 on entities unseen in training well below seen ones."""
    su, gap = _breakdown_gap(m, "seen_in_train", "seen", "unseen")
    if su is None:
        return None
    share = su["unseen"]["num_gold"] / (su["seen"]["num_gold"] + su["unseen"]["num_gold"])
    return (f"F1 on entities unseen in training is {_pct(su['unseen']['f1'])} against "
            f"{_pct(su['seen']['f1'])} on seen ones (a {_pct(gap)}-point gap; {_pct(share)}% of the gold "
            f"entities are unseen): generalisation beyond memorised names is the lever "
            f"(pre-trained representations, character features, gazetteers or more varied data).")


def _breakdown_gap(m: dict, name: str, good: str, bad: str) -> tuple[dict | None, float]:
    """A breakdown whose ``bad`` bucket scores more than 2 points of F1 below its ``good`` one, and the gap;
    ``(None, 0.0)`` when either bucket has no gold entity or the gap is smaller."""
    b = m.get("breakdowns", {}).get(name)
    if not (b and b[good]["num_gold"] and b[bad]["num_gold"]):
        return None, 0.0
    gap = b[good]["f1"] - b[bad]["f1"]
    return (b, gap) if gap > 0.02 else (None, 0.0)


def _casing_hint(m: dict) -> str | None:
    """All-caps sentences well below mixed-case ones."""
    cs, gap = _breakdown_gap(m, "casing", "mixed case", "all caps")
    if cs is None:
        return None
    return (f"all-caps sentences score F1 {_pct(cs['all caps']['f1'])} against "
            f"{_pct(cs['mixed case']['f1'])} for mixed case ({_pct(gap)} points; "
            f"{cs['all caps']['sentences']:,} sentences, {cs['all caps']['num_gold']:,} gold entities): "
            f"casing carries much of the signal, so try upper-casing augmentation or truecasing headlines.")


def _entity_length_hint(m: dict) -> str | None:
    """The entity length (with at least 5 gold entities) that scores furthest below overall."""
    el = m.get("breakdowns", {}).get("entity_length")
    if not el:
        return None
    scored = [(b, v) for b, v in el.items() if v["num_gold"] >= 5]
    if len(scored) < 2:
        return None
    worst_b, worst = min(scored, key=lambda x: x[1]["f1"])
    f1 = m["scores"]["f1"]
    if not f1 - worst["f1"] > 0.05:
        return None
    return (f"entities of {worst_b} words score F1 {_pct(worst['f1'])} "
            f"({worst['num_gold']:,} gold), {_pct(f1 - worst['f1'])} points below overall.")


def _strict_hint(m: dict) -> str | None:
    """Strict IOB2 F1 below conlleval's: ill-formed entities."""
    sc = m["scores"]
    strict = sc.get("strict")
    if not (strict and sc["f1"] - strict["f1"] > 0.002):
        return None
    return (f"strict IOB2 F1 is {_pct(strict['f1'])} vs {_pct(sc['f1'])} in conlleval mode: "
            f"some predicted entities start with I- (ill-formed IOB2); a CRF or constrained decoding would "
            f"remove them.")


def _balance_hint(m: dict) -> str | None:
    """Precision and recall far apart."""
    sc, err = m["scores"], m["errors"]
    p, r = sc["precision"], sc["recall"]
    if not abs(p - r) > 0.02:
        return None
    return (f"precision {_pct(p)} and recall {_pct(r)} are unbalanced: the model "
            + (f"under-predicts entities ({err['outcomes'][MISSED]:,} missed)" if r < p
               else f"over-predicts entities ({err['outcomes'][SPURIOUS]:,} spurious)") + ".")


# in the order the hints are listed for each model
_HINTS = (_error_class_hint, _weakest_type_hint, _confusion_hint, _unseen_hint, _casing_hint, _entity_length_hint,
          _strict_hint, _balance_hint)


def _class_advice(cls: str) -> str:
    return {
        WRONG_TYPE: ": the spans are found but typed wrongly, so context for typing (document context, "
                    "a larger encoder) matters more than boundaries",
        WRONG_BOUNDARY: ": look at the examples for systematic boundary slips (titles, 'the', nested names)",
        WRONG_TYPE_BOUNDARY: "",
        MISSED: ": recall is the bottleneck",
        SPURIOUS: ": precision is the bottleneck",
    }.get(cls, "")


def disagreement_hint(a: str, b: str, dis: dict) -> str | None:
    a, b = md_escape(a), md_escape(b)
    na, nb = len(dis["a_only"]), len(dis["b_only"])
    if not na and not nb:
        return None
    total = na + nb + dis["both"] + dis["neither"]
    return (f"**{a}** gets {na:,} gold entities exactly right that **{b}** does not, and **{b}** gets {nb:,} "
            f"that **{a}** does not ({_pct((na + nb) / total) if total else '0.0'}% of {total:,} gold entities); "
            f"{dis['neither']:,} are wrong in both"
            + (": an ensemble or a look at the differing examples could pay off." if min(na, nb) >= 0.1 * max(na, nb)
               else "."))


# --- the runs of one report ------------------------------------------------------------------------
