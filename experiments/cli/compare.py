"""Compare finished runs: tables, curves and a report, aggregated over seeds.

mixerlab compare PATH... [--by KEYS] [--metric NAME] [--best-over KEYS] [--also METRICS] [--x KEYS]
                 [--reference NAME|FILE] [--write-reference NAME|FILE] [--maps [N]] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from mixerlab.experiments.compare.aggregate import BEST_OVER, build_comparison
from mixerlab.experiments.compare.comparison import PROPERTIES, Comparison
from mixerlab.experiments.compare.history import BANDS
from mixerlab.experiments.compare.outputs import write_outputs
from mixerlab.experiments.compare.reference import add_reference, reference_path, write_reference
from mixerlab.experiments.compare.runs import Run, load_runs
from mixerlab.experiments.compare.scaling import add_scaling, check_x
from mixerlab.experiments.compare.suite import SUITES, add_suite, find_suite, varying_setting_keys
from mixerlab.experiments.compare.terminal import print_report

if TYPE_CHECKING:
    from mixerlab.experiments.maps.comparison import MapsFigure

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
        metavar="KEYS",
        help="comma-separated grouping keys: results fields (mixer, task) or dotted config paths "
        "(model.d_model); seeds are always averaged over (default: mixer; a suite's runs: mixer "
        "and the setting keys that vary)",
    )
    parser.add_argument(
        "--metric",
        metavar="NAME",
        help="selection metric, from results' best (default: val/loss; a suite's runs: its "
        "metric, val/acc for MAD)",
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
        "--best-over",
        "--lr-key",
        metavar="KEYS",
        help="comma-separated swept config keys: where a group ran several combinations of "
        "their values (grid points), the one with the best mean --metric over the seeds every "
        "point ran is kept, with all its seeds (add a key to --by to see each value as its own "
        f"row; --lr-key is the old name; default: {','.join(BEST_OVER)}; a suite's runs: its "
        "grid, optim.lr,optim.weight_decay for MAD)",
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
        "--reference",
        metavar="NAME|FILE",
        help=f"put a stored reference's rows beside the runs in the suite's table: a suite's "
        f"shipped one ({', '.join(SUITES)}) or a .json file; refused when the runs depart from "
        "its protocol, its rows marked stale where their code changed since",
    )
    parser.add_argument(
        "--write-reference",
        metavar="NAME|FILE",
        help="store the suite's rows of these (finished) runs as a reference: into mixerlab's "
        "baselines/ by the suite's name, or a .json file",
    )
    parser.add_argument(
        "--maps",
        nargs="?",
        const=0,
        type=int,
        metavar="N",
        help="draw each group's mixing maps on validation example N (default 0) of each task: "
        "its best run with a checkpoint, into maps.png and report.html (`mixerlab maps` draws "
        "any runs)",
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="output folder (default: <first PATH>/comparison)"
    )
    return parser


def _compare(args: argparse.Namespace, runs: list[Run]) -> Comparison:
    """The comparison the arguments ask for, with a suite's table when the runs are its tasks'
    (its metric and grid the defaults, each setting a group of the usual table)."""
    suite = find_suite(runs)
    if suite is None and (args.reference or args.write_reference):
        flag = "--reference" if args.reference else "--write-reference"
        listed = ", ".join(f"{s.name}: {s.prefix}*" for s in SUITES.values())
        raise ValueError(f"{flag}: the finished runs are not all of one suite's tasks ({listed})")
    x = _split(args.x)
    check_x(runs, x)
    settings = varying_setting_keys(runs) if suite else []
    by = _split(args.by) if args.by else [*(["task"] if suite else []), "mixer", *settings]
    by += [key for key in x if key not in PROPERTIES and key not in by]  # a point per value
    metric = args.metric or (suite.metric if suite else "val/loss")
    default = suite.best_over if suite else BEST_OVER
    best_over = _split(args.best_over) if args.best_over else default
    comparison = build_comparison(
        runs, by, metric, args.mode, best_over, _split(args.also), args.band, settings
    )
    comparison = add_scaling(comparison, runs, x)
    if suite is None:
        return comparison
    comparison = add_suite(comparison, runs, suite)
    if args.reference:
        comparison = add_reference(comparison, runs, suite, reference_path(args.reference))
    if args.write_reference:
        path = reference_path(args.write_reference)
        written = write_reference(path, comparison, runs, suite)
        print(f"reference written to {path}: {written}")
    return comparison


def _maps(comparison: Comparison, example: int) -> list[MapsFigure]:
    """The mixing maps' figures (their code loads models with torch: imported when asked for)."""
    from mixerlab.experiments.maps.comparison import comparison_maps

    return comparison_maps(comparison, example)


def main(argv: list[str] | None = None) -> int:
    """``mixerlab compare``: 0 when written, 1 when no run finished, 2 on bad input."""
    args = _parser().parse_args(argv)
    console = Console()
    try:
        runs = load_runs(args.paths)
        comparison = _compare(args, runs)
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
    try:
        maps = [] if args.maps is None else _maps(comparison, args.maps)
    except ValueError as err:
        print(f"mixerlab compare: error: --maps: {err}", file=sys.stderr)
        return 2
    out = args.out or _default_out(args.paths[0])
    written = write_outputs(comparison, out, maps)
    print_report(comparison, console)
    console.print(f"written to {out}: {', '.join(p.name for p in written)}", highlight=False)
    return 0
