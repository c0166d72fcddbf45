"""Compare finished runs: tables, curves and a report, aggregated over seeds.

mixerlab compare PATH... [--by KEYS] [--metric NAME] [--also METRICS] [--x KEYS] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from mixerlab.experiments.compare.aggregate import build_comparison
from mixerlab.experiments.compare.comparison import PROPERTIES
from mixerlab.experiments.compare.history import BANDS
from mixerlab.experiments.compare.outputs import write_outputs
from mixerlab.experiments.compare.runs import load_runs
from mixerlab.experiments.compare.scaling import add_scaling, check_x
from mixerlab.experiments.compare.terminal import print_report

COMMAND = "compare"
HELP = "compare finished runs: tables and curves"


def _default_out(path: Path) -> Path:
    return (path.parent if path.is_file() else path) / "comparison"


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixerlab compare",
        description=__doc__.split("\n")[0],
        epilog="example: mixerlab compare runs/multirun/ --by mixer.name,model.d_model "
        "--metric val/acc",
    )
    parser.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="run folders (searched recursively)"
    )
    parser.add_argument(
        "--by",
        default="mixer",
        metavar="KEYS",
        help="comma-separated grouping keys: results fields (mixer, task) or dotted config paths "
        "(model.d_model); seeds are always averaged over (default: mixer)",
    )
    parser.add_argument(
        "--metric", default="val/loss", metavar="NAME", help="selection metric, from results' best"
    )
    parser.add_argument(
        "--also",
        default="",
        metavar="METRICS",
        help="comma-separated further metrics to tabulate, final values of the same runs; globs "
        "allowed: 'val/acc@*' gives one column per validation set",
    )
    parser.add_argument(
        "--mode",
        choices=("min", "max"),
        help="minimise or maximise --metric (default: from its name)",
    )
    parser.add_argument(
        "--lr-key",
        default="optim.lr",
        metavar="KEY",
        help="config key of the learning rate; with several values in a group the best is kept "
        "(add it to --by to see every lr as its own row)",
    )
    parser.add_argument(
        "--x",
        default="",
        metavar="KEYS",
        help="comma-separated axes to draw the metric against (metric_vs_x.png), one row of "
        f"panels each: run properties ({', '.join(PROPERTIES)}) or numeric config keys "
        "(model.d_model), a config key also grouping the tables (default: params)",
    )
    parser.add_argument(
        "--band",
        choices=BANDS,
        default="minmax",
        help="seed band on the curve plots and error bars on metric_vs_x.png",
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="output folder (default: <first PATH>/comparison)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``mixerlab compare``: 0 when written, 1 when no run finished, 2 on bad input."""
    args = _parser().parse_args(argv)
    console = Console()
    try:
        runs = load_runs(args.paths)
        x = _split(args.x)
        check_x(runs, x)
        by = _split(args.by)
        by += [key for key in x if key not in PROPERTIES and key not in by]  # a point per value
        comparison = build_comparison(
            runs, by, args.metric, args.mode, args.lr_key, _split(args.also), args.band
        )
        comparison = add_scaling(comparison, runs, x)
    except ValueError as err:
        print(f"mixerlab compare: error: {err}", file=sys.stderr)
        return 2
    if not comparison.groups:
        print_report(comparison, console)
        print(
            f"mixerlab compare: error: none of the {len(runs)} runs finished (listed above)",
            file=sys.stderr,
        )
        return 1
    out = args.out or _default_out(args.paths[0])
    written = write_outputs(comparison, out)
    print_report(comparison, console)
    console.print(f"written to {out}: {', '.join(p.name for p in written)}", highlight=False)
    return 0
