"""``repae report RUN``: one self-contained HTML page of a run (config, curves, samples, analysis, evaluation).

Examples::

    repae report runs/repae-fmnist                      # -> runs/repae-fmnist/report.html
    repae report runs/x --out x.html --no-analyze       # only what the run folder already holds

The page embeds every image (base64 PNG) and loads nothing from the network, so it opens from
disk and can be mailed as one file. Sections: ``repae.analysis.report``.
"""

from __future__ import annotations

import argparse
import logging

from repae.cli.argtypes import positive_int
from repae.cli.common import default_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder (the one repae train wrote: config.json, metrics.jsonl, checkpoints/)")
    parser.add_argument("--out", default=None, help="HTML file to write (default: RUN/report.html)")
    parser.add_argument("--no-analyze", action="store_true",
                        help="do not run a quick analysis when RUN/analysis/ is missing")
    parser.add_argument("--quick-images", type=positive_int, default=256,
                        help="images of that quick analysis (default 256; `repae analyze` defaults to 1000)")
    parser.add_argument("--no-samples", action="store_true",
                        help="do not draw samples when the run has no preview grid")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")


def run(args: argparse.Namespace) -> int:
    from repae.analysis.report import build_report

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.out:
        from repae.utils.io import check_output_path

        check_output_path(args.out, folder=False, what="--out")  # before the work, not after it
    path = build_report(args.run, out=args.out, analyze_if_missing=not args.no_analyze,
                        quick_images=args.quick_images, draw_samples=not args.no_samples,
                        device=default_device(args.device))
    print(f"wrote {path}")
    return 0
