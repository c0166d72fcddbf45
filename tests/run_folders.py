"""Run folders as the train app leaves them (results.json and metrics.csv), written without
training, for the tests of what reads them: ``mixerlab compare``, its plots, the dashboard."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

STEPS = (10, 20, 30)


def write_run(
    root: Path,
    name: str,
    *,
    mixer: str,
    seed: int,
    loss: float,
    acc: float = 0.5,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    d_model: int = 64,
    params: int = 1000,
    tokens_per_s: float = 500.0,
    wall_s: float = 30.0,
    status: str = "finished",
    error: str | None = None,
    final: dict[str, float] | None = None,
    task: str = "mqar",
    datamodule: dict[str, Any] | None = None,
) -> Path:
    """A run folder as the train app leaves it; the val/loss curve ends at ``loss``. A
    ``datamodule`` gives the task's config its ``datamodule`` node (a suite's settings)."""
    run = root / name
    run.mkdir(parents=True)
    curve = [loss + 0.1 * (len(STEPS) - 1 - i) for i in range(len(STEPS))]
    with (run / "metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "wall_s", "train/loss", "val/loss", "val/acc"])
        for step, value in zip(STEPS, curve, strict=True):
            writer.writerow([step - 5, (step - 5) * 0.5, value + 0.3, "", ""])  # a train-only row
            writer.writerow([step, step * 0.5 + seed, "", value, acc])
    results = {
        "status": status,
        "mixer": mixer,
        "task": task,
        "seed": seed,
        "params": params,
        "flops_per_token": 2.0 * params,
        "metrics": {"val/loss": loss, "val/acc": acc, **(final or {})},
        "best": {"val/loss": loss, "val/acc": acc},
        "tokens_per_s": tokens_per_s,
        "wall_s": wall_s,
        "wandb_run_id": None,
        "checkpoints": {"last": None, "best": None},
        "config": {
            "mixer": {"name": mixer},
            "model": {"d_model": d_model, "n_layers": 2},
            "optim": {"lr": lr, "weight_decay": weight_decay},
            "task": {"name": task, **({"datamodule": datamodule} if datamodule else {})},
            "trainer": {"max_steps": STEPS[-1]},
            "name": "zoology",
            "seed": seed,
        },
        "error": error,
        "history": "metrics.csv",
    }
    (run / "results.json").write_text(json.dumps(results))
    return run


def two_by_two(root: Path) -> None:
    """2 mixers x 2 seeds, attention clearly better on val/loss."""
    write_run(root, "a0", mixer="attention", seed=0, loss=1.0, tokens_per_s=900, params=2000)
    write_run(root, "a1", mixer="attention", seed=1, loss=1.2, tokens_per_s=1100, params=2000)
    write_run(root, "r0", mixer="rnn", seed=0, loss=2.0, tokens_per_s=400, wall_s=50)
    write_run(root, "r1", mixer="rnn", seed=1, loss=2.5, tokens_per_s=600, wall_s=70)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))
