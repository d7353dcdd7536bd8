"""Every config option and every command-line flag declares its values; walked here from the declarations
with one bad value each, so an option added later cannot skip the check: one line naming the option, exit
code 2, nothing written."""

from __future__ import annotations

import ast
import dataclasses
import json
import typing

import pytest

from common.cli import Parser
from common.options import Allowed, allowed_of, check_value
from tests.tiny_models import REPO_ROOT
from train.config import REMOVED_OPTIONS, Config, ConfigError, from_dict, load_config, to_dict

NUMBERS = (int, float)


def _options():
    """(``section.name``, annotation, declaration) of every config option."""
    for section in dataclasses.fields(Config):
        cls = section.default_factory
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            yield f"{section.name}.{f.name}", hints[f.name], allowed_of(f)


OPTIONS = list(_options())


def _wrong_type(typ):
    if typing.get_origin(typ) is list:
        return "not-a-list"
    return {bool: "yes", int: 1.5, float: "fast", str: [1]}[typ]


def _bad_values(typ, allowed: Allowed | None):
    yield "type", _wrong_type(typ)
    if allowed is not None:
        yield "range", allowed.bad_value(typ)


def test_every_numeric_option_declares_its_range():
    undeclared = [name for name, typ, allowed in OPTIONS if typ in NUMBERS and allowed is None]
    assert not undeclared, f"declare the allowed values with opt(..., at_least=...) etc.: {undeclared}"
    for name, typ, allowed in OPTIONS:
        if allowed is not None:
            assert allowed.bad_value(typ) is not None, f"{name}: its declaration refuses nothing"


def test_defaults_are_allowed():
    for name, typ, allowed in OPTIONS:
        section, _, key = name.partition(".")
        assert check_value(name, getattr(getattr(Config(), section), key), typ, allowed) is None


@pytest.mark.parametrize("name,typ,allowed", OPTIONS, ids=[o[0] for o in OPTIONS])
def test_every_option_refuses_a_bad_value(name, typ, allowed, tmp_path, capsys):
    from train.__main__ import main

    run = tmp_path / "run"
    for kind, value in _bad_values(typ, allowed):
        override = f"{name}={json.dumps(value)}"
        with pytest.raises(ConfigError) as info:
            load_config(None, [override])
        message = str(info.value)
        assert "\n" not in message and name in message and repr(value) in message, (kind, message)
        assert main(["--output-dir", str(run), "--data", str(tmp_path / "d.json"), override]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and name in err and err.startswith("ner-train: error:"), err
        assert not run.exists()


@pytest.mark.parametrize("overrides,expected", [
    (["train.epochs=0", "train.max_steps=0"], "nothing to train"),
    (["train.epochs=-2"], "train.epochs must be an integer >= 0, got -2"),
    (["train.max_steps=-1"], "train.max_steps must be an integer >= 0, got -1"),
    (["data.max_sentences=-1"], "data.max_sentences must be an integer >= 0, got -1"),
    (["train.eval_max_tokens=0"], "train.eval_max_tokens must be an integer >= 8, got 0"),
    (["model.dropout=1.5"], "model.dropout must be a number >= 0 and < 1, got 1.5"),
    (["model.lstm_hidden=0"], "model.lstm_hidden must be an integer >= 1, got 0"),
    (["model.lstm_layers=0"], "model.lstm_layers must be an integer >= 1, got 0"),
    (["train.num_threads=-1"], "train.num_threads must be an integer >= 0, got -1"),
    (["train.log_every=0"], "train.log_every must be an integer >= 1, got 0"),
    (['train.device="tpu"'], "train.device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["model.pack_pieces=4"], "model.pack_pieces must be 0 (off) or an integer >= 8, got 4"),
    (["optim.fused=false"], "optim.fused is no longer an option: remove it"),
    (["train.log_all_ranks=true"], "train.log_all_ranks is no longer an option: remove it"),
])
def test_the_reported_values_are_refused(overrides, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, overrides)


def test_a_saved_config_with_removed_options_loads():
    saved = to_dict(Config())
    for name in REMOVED_OPTIONS:
        section, _, key = name.partition(".")
        saved[section][key] = True
    assert to_dict(from_dict(saved)) == to_dict(Config())


def test_every_training_option_says_what_it_does():
    """A docstring line under every option of train/config.py: what it does, for the user."""
    tree = ast.parse((REPO_ROOT / "train" / "config.py").read_text())
    sections = {f.default_factory.__name__ for f in dataclasses.fields(Config)}
    undocumented = []
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in sections):
        for stmt, after in zip(cls.body, cls.body[1:] + [None]):
            if isinstance(stmt, ast.AnnAssign) and not (isinstance(after, ast.Expr)
                                                        and isinstance(after.value, ast.Constant)):
                undocumented.append(f"{cls.name}.{stmt.target.id}")
    assert not undocumented, f"say in a docstring line what these do: {undocumented}"


def test_allowed_values_still_load():
    cfg = load_config(None, ["train.epochs=0", "train.max_steps=5", 'train.device="cuda:1"', 'data.scheme="iob2"',
                             "model.pack_pieces=0", "model.dropout=0", 'wandb.mode="OFFLINE"', "optim.lr=1"])
    assert cfg.train.max_steps == 5 and cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)


# ---- command-line flags

class _Captured(Exception):
    def __init__(self, parser):
        self.parser = parser


def _parser(main) -> Parser:
    """The parser a command's main builds (intercepted before it parses)."""
    def capture(self, *args, **kwargs):
        raise _Captured(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Parser, "parse_args", capture)
        mp.setattr(Parser, "parse_intermixed_args", capture)
        with pytest.raises(_Captured) as info:
            main([])
    return info.value.parser


def _commands():
    from infer.__main__ import main as tag
    from pipeline.__main__ import main as pipeline
    from report.__main__ import main as report
    from train.__main__ import main as train
    from train.evaluate import main as evaluate

    return {"ner-train": train, "ner-tag": tag, "ner-report": report, "ner-evaluate": evaluate, "ner-main": pipeline}


FREE_FORM = {("ner-train", "overrides")}
"""Arguments checked elsewhere: ner-train's section.option=value overrides are the config options above."""


def _flags():
    for command, main in _commands().items():
        parser = _parser(main)
        for action in parser._actions:
            if action.nargs == 0 or (command, action.dest) in FREE_FORM:
                continue  # --help, switches
            yield command, parser, action


def _fill(action, value) -> list[str]:
    count = action.nargs if isinstance(action.nargs, int) else 1
    values = [value] + ["x"] * (count - 1)
    return (action.option_strings[:1] + values) if action.option_strings else values


@pytest.mark.parametrize("command,parser,action", list(_flags()), ids=lambda v: getattr(v, "dest", v)
                         if not isinstance(v, Parser) else "")
def test_every_flag_declares_and_refuses_a_bad_value(command, parser, action, capsys):
    declared = action.choices is not None or hasattr(action.type, "bad_value")
    assert declared, f"{command} {action.option_strings or action.dest}: give it choices= or a type from common.cli"
    bad = "no-such-value" if action.choices is not None else action.type.bad_value
    required = [a for a in parser._actions if a.required and a is not action]
    argv = [arg for a in required for arg in _fill(a, "x")] + _fill(action, bad)
    with pytest.raises(SystemExit) as info:
        parser.parse_intermixed_args(argv) if command == "ner-train" else parser.parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    shown = action.option_strings[0] if action.option_strings else action.metavar or action.dest
    assert err.count("\n") == 1 and err.startswith(f"{command}: error: argument") and shown in err, err
