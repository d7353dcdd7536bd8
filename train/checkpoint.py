"""Resume checkpoints: save, find the latest, load; and the check that a resumed run is the same run.

::

    RUN/checkpoints/
      step_00000120/          engine state (engine.pt, or DeepSpeed's files) + trainer_state.pt
      step_00000120-1/        the same step saved again (e.g. at an epoch end after a mid-epoch save)
      latest                  the name of the newest complete checkpoint

A checkpoint is written into ``NAME.tmp`` and renamed when complete;
``trainer_state.pt`` is written last, so its presence marks a complete
checkpoint.  The folder that ``latest`` names is never deleted or replaced:
saving the same step again writes a new name.  When ``latest`` is missing
or names nothing, the newest complete checkpoint is used.

Resharding: a DDP checkpoint holds the whole model and optimizer (rank 0
writes them), so it resumes at another number of processes when an optimizer
step still takes the same micro-batches over all ranks (processes x
``optim.grad_accum``): the epoch's global batch list and the number of global
batches consumed then map onto the new ranks exactly.  DeepSpeed checkpoints
hold per-process optimizer partitions and resume at their own size only.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil

import numpy as np
import torch

from common import distributed
from common.io import atomic_write, writing
from common.rundir import RunFolder

from .config import Config, ConfigError, from_dict, to_dict

log = logging.getLogger("train")

LATEST = "latest"
TRAINER_STATE = "trainer_state.pt"
_NAME = re.compile(r"^step_(\d{8})(?:-(\d+))?$")
_DEEPSPEED_DIR = "deepspeed"  # train.ds_engine.CHECKPOINT_TAG, not imported: that module is for DeepSpeed runs
_TORCH_FILE = "engine.pt"


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _complete(root: str) -> list[str]:
    """Names of complete checkpoints, oldest first (by step, then by how often that step was saved)."""
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = _NAME.match(name)
        if m and os.path.exists(os.path.join(root, name, TRAINER_STATE)):
            found.append((int(m.group(1)), int(m.group(2) or 0), name))
    return [name for *_, name in sorted(found)]


def latest_checkpoint(run_dir: str) -> str | None:
    """The checkpoint to resume from: the one ``latest`` names, else the newest complete one, else None."""
    root = RunFolder(run_dir).checkpoints_dir
    pointer = os.path.join(root, LATEST)
    if os.path.exists(pointer):
        with open(pointer) as f:
            path = os.path.join(root, f.read().strip())
        if os.path.exists(os.path.join(path, TRAINER_STATE)):
            return path
    complete = _complete(root)
    return os.path.join(root, complete[-1]) if complete else None


def save_checkpoint(engine, trainer_state: dict, run_dir: str, info, keep: int = 2) -> str:
    """All ranks: write a checkpoint of ``engine`` and ``trainer_state``, point ``latest`` at it, prune old ones."""
    root = RunFolder(run_dir).checkpoints_dir
    base = f"step_{trainer_state['step']:08d}"
    name = None
    if info.is_main:  # rank 0 names it: ranks listing a slow shared file system could choose different names
        taken = set(os.listdir(root)) if os.path.isdir(root) else set()
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}-{k}"
    name = distributed.broadcast_object(name, info)
    final = os.path.join(root, name)
    tmp = final + ".tmp"
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    distributed.barrier()
    try:
        with writing(tmp):
            engine.save(tmp)
    except OSError:  # no space, file too large: the half-written checkpoint goes, the complete ones stay
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    rng_states = distributed.gather_objects(_rng_state(), info)
    distributed.barrier()  # every rank's engine files are written
    if info.is_main:
        try:
            with writing(os.path.join(tmp, TRAINER_STATE)):
                torch.save({**trainer_state, "rng": rng_states}, os.path.join(tmp, TRAINER_STATE))
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        os.replace(tmp, final)
        with atomic_write(os.path.join(root, LATEST)) as f:
            f.write(name)
        for old in _complete(root)[:-keep]:
            shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    distributed.barrier()
    return final


def _engine_of(path: str) -> str | None:
    """The engine that wrote the checkpoint at ``path``, from its files."""
    if os.path.isdir(os.path.join(path, _DEEPSPEED_DIR)):
        return "deepspeed"
    if os.path.exists(os.path.join(path, _TORCH_FILE)):
        return "ddp"
    return None


def _read_state(path: str) -> dict:
    return torch.load(os.path.join(path, TRAINER_STATE), weights_only=False)


def _config_accum(path: str) -> int:
    """optim.grad_accum in the config.toml of the run folder holding checkpoint ``path`` (0 = none)."""
    saved = RunFolder(os.path.dirname(os.path.dirname(os.path.abspath(path)))).read_config()
    return int(saved.get("optim", {}).get("grad_accum", 0) or 0)


def _check_fits(saved: dict, path: str, engine: str, info, grad_accum: int) -> None:
    """Refuse a checkpoint this run cannot continue exactly (another engine, or a step of other batches)."""
    written_with = _engine_of(path)
    if written_with and written_with != engine:
        raise ConfigError(f"{path} was written by the {written_with} engine and this run uses {engine}: "
                          f"resume with train.engine={written_with} (one engine cannot load the other's checkpoint)")
    written_by = saved.get("world_size", info.world_size)
    saved_accum = saved.get("grad_accum") or _config_accum(path)  # older checkpoints: the run's config.toml
    if written_by == info.world_size and saved_accum in (0, grad_accum):
        return
    if not saved_accum or engine == "deepspeed" and written_by != info.world_size:
        why = ("its optimizer partitions are per process (DeepSpeed's universal checkpoint is not supported)"
               if engine == "deepspeed" else "its optimizer step's micro-batches are not known")
        raise ConfigError(f"{path} was written by {written_by} process(es) and this run has {info.world_size}: "
                          f"{why}; resume with {written_by} processes (torchrun --nnodes/--nproc_per_node)")
    per_step = written_by * saved_accum
    if per_step != info.world_size * grad_accum:
        hint = (f"set optim.grad_accum={per_step // info.world_size} to resume with {info.world_size} process(es)"
                if per_step % info.world_size == 0 else
                f"{per_step} micro-batches do not split evenly over {info.world_size} processes: resume with a "
                f"number of processes that divides {per_step}")
        raise ConfigError(f"{path}: an optimizer step of this run takes {per_step} micro-batches ({written_by} "
                          f"process(es) x optim.grad_accum {saved_accum}), here it would take "
                          f"{info.world_size * grad_accum} ({info.world_size} x {grad_accum}): {hint}")


def check_checkpoint(path: str, engine: str, info, grad_accum: int) -> None:
    """Refuse ``path`` before the model and engine are built (see :func:`load_checkpoint`); one that cannot
    be read is left to :func:`load_with_fallback`, which names it and takes an older one."""
    try:
        saved = _read_state(path)
    except Exception:  # noqa: BLE001 - a damaged file: torch.load raises many kinds
        return
    _check_fits(saved, path, engine, info, grad_accum)


def load_checkpoint(engine, path: str, info, grad_accum: int = 1) -> dict:
    """Restore ``engine`` and this rank's RNG from ``path``; returns the trainer state saved with it,
    its position in the epoch mapped onto this run's processes.

    Refused (before the engine is touched) when written by another engine, or when this run's optimizer step
    takes other micro-batches (processes x ``grad_accum``), or by another number of DeepSpeed processes.
    """
    saved = _read_state(path)
    _check_fits(saved, path, getattr(engine, "name", "ddp"), info, grad_accum)
    written_by = saved.get("world_size", info.world_size)
    consumed = saved.get("batch_in_epoch", 0) * written_by  # global batches of the epoch done
    if consumed % info.world_size:  # checkpoints are written at optimizer steps, which end on a whole step
        raise ConfigError(f"{path}: {consumed} batches of the epoch done do not split over {info.world_size} "
                          "processes")
    saved["batch_in_epoch"] = consumed // info.world_size
    saved["world_size"], saved["grad_accum"] = info.world_size, grad_accum
    engine.load(path)
    rng = saved.pop("rng")
    _set_rng_state(rng[info.rank] if info.rank < len(rng) else rng[0])
    return saved


def load_with_fallback(engine, path: str, info, grad_accum: int = 1) -> tuple[str, dict]:
    """:func:`load_checkpoint` of ``path``; when it cannot be read (truncated, corrupt), the next older
    complete checkpoint, each failure named in one log line.  Returns (the checkpoint used, its trainer
    state); ConfigError when none can be read."""
    root = os.path.dirname(path)
    older = [os.path.join(root, name) for name in reversed(_complete(root))]
    candidates = [path] + [p for p in older if p != path and _order(p) < _order(path)]
    failures = []
    for candidate in candidates:
        try:
            return candidate, load_checkpoint(engine, candidate, info, grad_accum)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - torch.load and DeepSpeed raise many kinds on a damaged file
            reason = " ".join(str(e).split())[:300] or type(e).__name__
            failures.append(f"{candidate} ({type(e).__name__}: {reason})")
            log.warning("checkpoint %s cannot be read (%s: %s); trying an older one", candidate,
                        type(e).__name__, reason)
    raise ConfigError(f"--resume: no complete checkpoint in {root} can be read: {'; '.join(failures)}. "
                      "Pass --overwrite to start over")


def _order(path: str) -> tuple[int, int]:
    m = _NAME.match(os.path.basename(path))
    return (int(m.group(1)), int(m.group(2) or 0)) if m else (-1, -1)


def _comparable(cfg_dict: dict) -> dict:
    """The parts of a config that must match for a resume to make sense (``optim.grad_accum`` is checked
    against the checkpoint instead: it may change with the number of processes)."""
    keep = {"data": ("path", "scheme", "labels", "max_sentences"),
            "model": None, "optim": None,
            "train": ("epochs", "max_steps", "max_tokens", "seed", "engine")}
    out = {}
    for section, fields in keep.items():
        values = cfg_dict.get(section, {})
        out[section] = {k: v for k, v in values.items()
                        if (fields is None or k in fields) and (section, k) != ("optim", "grad_accum")}
    for section, key in (("data", "path"), ("model", "encoder"), ("model", "init_from")):
        value = out[section].get(key)
        if value and os.path.exists(value):  # the same file spelled differently (relative, absolute, a link)
            out[section][key] = os.path.realpath(value)
    return out


def check_resume_config(cfg: Config, run_dir: str) -> None:
    """Refuse to resume a run folder made by another model or config."""
    run = RunFolder(run_dir)
    saved_dict = run.read_config()
    if not saved_dict:
        return
    a, b = _comparable(to_dict(from_dict(saved_dict, run.config_path))), _comparable(to_dict(cfg))
    diffs = [f"{s}.{k}: saved {a[s].get(k)!r}, now {b[s].get(k)!r}"
             for s in a for k in sorted(set(a[s]) | set(b[s])) if a[s].get(k) != b[s].get(k)]
    if diffs:
        raise ConfigError(f"{run_dir} was made by another model or config; cannot resume it: "
                          + "; ".join(diffs) + ". Use another train.output_dir or drop --resume.")
