"""mixerlab maps: how each trained run's mixers mix one validation example, layer by layer.

    mixerlab maps RUN_DIR [RUN_DIR ...] [--example N] [--gradient] [--probes K] [--out FILE]

Every run is drawn on the same example (row N of the first validation set, so the runs must
share a task): each layer's exact map where its mixer has one (``TokenMixer.mixing_map``),
else its gradient map (``mixers.mixing_map.gradient_map``, estimated from ``--probes``
projections per position); ``--gradient`` draws gradient maps for every mixer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

COMMAND = "maps"
HELP = "draw each layer's token-to-token mixing map of trained runs on one example"
# The longest example drawn: an exact map is (heads or channels) x L x L floats per layer, and a
# gradient map L x probes backward passes.
MAX_LENGTH = 1024


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixerlab maps", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders")
    parser.add_argument(
        "--example", type=int, default=0, metavar="N", help="validation example (default 0)"
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
        "--out", type=Path, metavar="FILE", help="PNG to write (default: maps.png in the first run)"
    )
    return parser


def _maps(args: argparse.Namespace) -> tuple[bytes, Path]:
    """The figure's PNG and where it goes; ValueError for bad input."""
    from mixerlab.experiments.maps.draw import draw_maps
    from mixerlab.experiments.maps.trained import load_run, validation_example
    from mixerlab.mixers.mixing_map import layer_maps

    if args.probes < 0:
        raise ValueError(f"--probes is a count of projections (0: exact), got {args.probes}")
    runs = [load_run(path) for path in args.runs]
    tasks = {str(run.config["task"]) for run in runs}
    if len(tasks) > 1:
        raise ValueError("the runs have different tasks: maps compare runs on one example")
    example = validation_example(runs[0].data, args.example)
    length = example.tokens.shape[1]
    if length > MAX_LENGTH:
        raise ValueError(
            f"example {args.example} has {length} tokens, more than the {MAX_LENGTH} drawn: "
            "pick a shorter example"
        )
    generator = torch.Generator().manual_seed(0)
    drawn = [
        (
            run.name,
            layer_maps(
                run.model,
                example.tokens,
                gradient=args.gradient,
                probes=args.probes or None,
                generator=generator,
            ),
        )
        for run in runs
    ]
    out = args.out or args.runs[0] / "maps.png"
    return draw_maps(drawn, example), out


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
    print(f"mixing maps of {len(args.runs)} run(s) written to {out}")
    return 0
