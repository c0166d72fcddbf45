"""mixerlab maps: how each run's mixers mix one example, layer by layer.

    mixerlab maps [RUN_DIR ...] [--untrained OVERRIDES ...] [--example N | --tokens IDS]
                  [--layers K,...] [--gradient] [--probes K] [--out FILE]

Every run is drawn on the same example (row N of the first validation set, or the token ids of
``--tokens``, so the runs must share a task): each layer's exact map where its mixer has one
(``TokenMixer.mixing_map``), else its gradient map (``mixers.mixing_map.gradient_map``,
estimated from ``--probes`` projections per position); ``--gradient`` draws gradient maps for
every mixer. ``--untrained "mixer=mamba experiment=mqar"`` adds a model as ``mixerlab train``
would start it, before any training.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMMAND = "maps"
HELP = "draw each layer's token-to-token mixing map of runs on one example"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixerlab maps", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, metavar="RUN_DIR", help="run folders")
    parser.add_argument(
        "--untrained",
        action="append",
        default=[],
        metavar="OVERRIDES",
        help="an untrained model from `mixerlab train` overrides, quoted as one argument "
        "(repeat for more)",
    )
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument(
        "--example", type=int, default=0, metavar="N", help="validation example (default 0)"
    )
    chosen.add_argument(
        "--tokens", metavar="IDS", help="draw this input instead: token ids, e.g. '3 9 4 9'"
    )
    parser.add_argument(
        "--layers", metavar="K,...", help="the layers to draw, from 0 (default: every layer)"
    )
    parser.add_argument(
        "--gradient", action="store_true", help="gradient maps for every mixer, exact or not"
    )
    parser.add_argument(
        "--probes",
        type=int,
        default=8,
        metavar="K",
        help="projections per position of the gradient estimate; 0: the exact gradient map",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="PNG to write (default: maps.png in the first run, ./maps.png for untrained ones)",
    )
    return parser


def _layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(word) for word in text.split(",") if word.strip()]
    except ValueError:
        raise ValueError(f"--layers takes layer numbers from 0, e.g. 0,1; got {text!r}") from None


def _maps(args: argparse.Namespace) -> tuple[bytes, Path]:
    """The figure's PNG and where it goes; ValueError for bad input."""
    from mixerlab.experiments.maps.draw import draw_runs
    from mixerlab.experiments.maps.trained import (
        given_example,
        load_run,
        untrained_run,
        validation_example,
    )

    if not args.runs and not args.untrained:
        raise ValueError("nothing to draw: give run folders, --untrained OVERRIDES, or both")
    if args.probes < 0:
        raise ValueError(f"--probes is a count of projections (0: exact), got {args.probes}")
    layers = _layers(args.layers)
    runs = [load_run(path) for path in args.runs]
    runs += [untrained_run(overrides) for overrides in args.untrained]
    tasks = {str(run.config["task"]) for run in runs}
    if len(tasks) > 1:
        raise ValueError("the runs have different tasks: maps compare runs on one example")
    if args.tokens is not None:
        example = given_example(args.tokens, runs[0].model.vocab_size)
    else:
        example = validation_example(runs[0].data, args.example)
    png = draw_runs(
        runs, example, gradient=args.gradient, probes=args.probes or None, layers=layers
    )
    return png, args.out or (args.runs[0] if args.runs else Path.cwd()) / "maps.png"


def main(argv: list[str] | None = None) -> int:
    """``mixerlab maps``: 0 when the PNG is written, 2 on bad input."""
    from mixerlab.lightning_modules.record import write_atomic

    args = _parser().parse_args(argv)
    try:
        png, out = _maps(args)
        write_atomic(out, png)
    except (ValueError, OSError) as err:
        print(f"mixerlab maps: error: {err}", file=sys.stderr)
        return 2
    count = len(args.runs) + len(args.untrained)
    print(f"mixing maps of {count} run(s) written to {out}")
    return 0
