"""How long ``mixerlab compare`` takes over a hundred runs (the target: under 30 s):
``python -m mixerlab.experiments.benchmarks.compare_speed [FOLDER]``. It fabricates a sweep of 5
mixers x 4 learning rates x 5 seeds on a task with four validation sets, each run's metrics.csv
as the train app writes it (a training row every 10 steps, a validation row every 50: 300 rows),
and compares it end to end with every lr as its own row, so all 100 runs' curves are read and 20
groups drawn.
"""

from __future__ import annotations

import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mixerlab.experiments.cli.compare import main as compare
from mixerlab.lightning_modules.record import HISTORY_FILE, RunResults

MIXERS = ("attention", "conv", "gmlp", "rnn", "smlp")
LRS = (3e-4, 1e-3, 3e-3, 1e-2)
SEEDS = range(5)
VAL_SETS = ("seq_len=64,kv=4", "seq_len=128,kv=8", "seq_len=256,kv=16", "seq_len=512,kv=32")
STEPS, TRAIN_EVERY, VAL_EVERY = 2500, 10, 50
CHANCE = 1 / 60


def fabricate_run(folder: Path, mixer: str, lr: float, seed: int) -> None:
    """One finished MQAR-like run: results.json and a 300-row metrics.csv."""
    rng = np.random.default_rng([MIXERS.index(mixer), LRS.index(lr), seed])
    skill = rng.uniform(0.2, 0.9)
    folder.mkdir(parents=True)
    val_metrics = ["val/loss", "val/acc", "val/ppl"]
    val_metrics += [f"val/{kind}@{name}" for name in VAL_SETS for kind in ("loss", "acc")]
    columns = ["step", "wall_s", "train/loss", "train/lr", "train/tokens_per_s", *val_metrics]
    rows, last = [], {}
    for step in range(TRAIN_EVERY, STEPS + 1, TRAIN_EVERY):
        progress = step / STEPS
        loss = 4.1 * (1 - skill * progress) + rng.normal(0, 0.05)
        rows.append({"step": step, "wall_s": step * 0.1, "train/loss": loss, "train/lr": lr,
                     "train/tokens_per_s": 5000 + rng.normal(0, 100)})  # fmt: skip
        if step % VAL_EVERY == 0:
            acc = CHANCE + (1 - CHANCE) * skill * progress
            last = {"val/loss": loss, "val/acc": acc, "val/ppl": float(np.exp(loss))}
            for i, name in enumerate(VAL_SETS):
                last[f"val/loss@{name}"] = loss * (1 + i / 10)
                last[f"val/acc@{name}"] = acc / (1 + i)
            rows.append({"step": step, "wall_s": step * 0.1 + 0.05, **last})
    with (folder / HISTORY_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    chance = {"val/acc": CHANCE, "val/loss": float(np.log(60)), "val/ppl": 60.0}
    results = {
        "status": "finished", "mixer": mixer, "task": "mqar", "seed": seed, "params": 10_000,
        "flops_per_token": 2e4, "metrics": last, "best": last, "tokens_per_s": 5000.0,
        "wall_s": STEPS * 0.1, "wandb_run_id": None, "checkpoints": {}, "error": None,
        "config": {"mixer": {"name": mixer}, "optim": {"lr": lr}, "task": {"name": "mqar"},
                   "trainer": {"max_steps": STEPS}, "name": "mqar", "seed": seed},
        "history": HISTORY_FILE,
        "chance": {m: {"value": v, "label": "chance", "how": "uniform guess over the 60 values"}
                   for m, v in chance.items()},
    }  # fmt: skip
    RunResults(**results).write(folder)


def fabricate_sweep(sweep: Path) -> None:
    """The 100 run folders, numbered like a Hydra multirun."""
    runs = ((mixer, lr, seed) for mixer in MIXERS for lr in LRS for seed in SEEDS)
    for number, (mixer, lr, seed) in enumerate(runs):
        fabricate_run(sweep / f"{number}_{mixer}", mixer, lr, seed)


def compare_sweep(sweep: Path, out: Path) -> tuple[int, float]:
    """``mixerlab compare`` on the sweep: its exit code and wall-clock seconds."""
    start = time.perf_counter()
    code = compare([str(sweep), "--by", "mixer,optim.lr", "--metric", "val/acc", "--out", str(out)])
    return code, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(argv[0]) if argv else Path(scratch)
        fabricate_sweep(root / "sweep")
        code, seconds = compare_sweep(root / "sweep", root / "comparison")
    print(f"mixerlab compare over 100 runs: {seconds:.1f} s (exit {code})")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
