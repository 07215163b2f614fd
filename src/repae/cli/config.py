"""`repae config`: print the resolved configuration of a preset with overrides."""

from __future__ import annotations

import argparse
import json

from repae.config import available_presets, check_ranges, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="fmnist", help=f"preset name ({', '.join(available_presets())}) or YAML path")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.batch_size=256")


def run(args: argparse.Namespace) -> int:
    from repae.training.builders import resolve_config

    cfg = resolve_config(load_config(args.config, args.overrides))  # sample.sampler=auto -> the model's, as a run saves it
    check_ranges(cfg)  # what `repae train` would refuse is refused here too, not printed as if it were valid
    print(json.dumps(cfg.to_dict(), indent=2, default=str))
    return 0
