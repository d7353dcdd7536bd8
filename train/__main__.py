"""``python -m train`` / ``torchrun -m train`` / ``ner-train``.

    python -m train --config train/configs/bert_conll03.toml --data DATA.json \\
        --output-dir runs/bert [--resume | --overwrite] [section.option=value ...]

Overrides (``section.option=value``) may stand anywhere on the command line.
"""

from __future__ import annotations

import argparse
import json
import sys

from common.cli import BAD_INPUT_EXIT, OS_ERROR_EXIT, Parser, device, os_error_line, output_dir_problem, text
from common.data import DataError
from taggers.export import ExportError

from .config import ConfigError, load_config


def parse_args(argv=None):
    p = Parser(prog="ner-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=text, help="TOML recipe (e.g. train/configs/bert_conll03.toml)")
    p.add_argument("--data", type=text, help="labelled data: CoNLL-style JSON or a folder of CoNLL files (data.path)")
    p.add_argument("--output-dir", type=text, help="run folder (train.output_dir)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the run folder")
    mode.add_argument("--overwrite", action="store_true", help="delete the run in the run folder and start over")
    p.add_argument("--engine", choices=["ddp", "deepspeed"], help="train.engine")
    p.add_argument("--deepspeed-config", type=text, help="DeepSpeed JSON config (train.deepspeed_config)")
    p.add_argument("--device", type=device, help="auto, cpu, cuda (train.device)")
    p.add_argument("overrides", nargs="*", help="section.option=value, applied last")
    return p.parse_intermixed_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides)
    for flag, key in (("data", "data.path"), ("output_dir", "train.output_dir"), ("engine", "train.engine"),
                      ("deepspeed_config", "train.deepspeed_config"), ("device", "train.device")):
        value = getattr(args, flag)
        if value is not None:
            overrides.insert(0, f"{key}={json.dumps(value)}")
    from common.heartbeat import HUNG_EXIT_CODE, CollectiveTimeout

    from .trainer import PREEMPTED_EXIT_CODE, Preempted, run

    output_dir = None
    try:
        cfg = load_config(args.config, overrides)
        output_dir = cfg.train.output_dir
        problem = output_dir_problem(output_dir)  # before the data and the model are loaded
        if problem:
            raise ConfigError(f"train.output_dir: {problem}")
        run(cfg, resume=args.resume, overwrite=args.overwrite)
    except Preempted:
        return PREEMPTED_EXIT_CODE
    except OSError as e:  # no space, file too large, permission: checkpoints are kept, --resume continues
        print(f"ner-train: error: {os_error_line(e, output_dir)} (fix this, then re-run with --resume to continue)",
              file=sys.stderr)
        return OS_ERROR_EXIT
    except CollectiveTimeout as e:
        print(f"ner-train: error: {e}", file=sys.stderr)
        return HUNG_EXIT_CODE
    except (ConfigError, DataError, ExportError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "CUDA" not in str(e):
            raise
        # printed once: the logging handlers only carry the run's progress
        print(f"ner-train: error: {e}", file=sys.stderr)
        return BAD_INPUT_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
