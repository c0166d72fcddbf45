"""results.json: the fields every run writes and every reader checks, defined once."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from mixerlab.lightning_modules.record import (
    FIELDS,
    RunResults,
    decode_record,
    read_results,
    shape_problem,
)

RESULT_FIELDS = {
    "status", "mixer", "task", "seed", "params", "flops_per_token", "metrics", "best",
    "tokens_per_s", "wall_s", "wandb_run_id", "checkpoints", "config", "error", "history",
    "chance", "budget", "state_size", "pid", "host", "last_step", "updated_at", "compute",
}  # fmt: skip


def test_results_have_exactly_the_contract_fields(tmp_path: Path) -> None:
    assert {f.name for f in fields(RunResults)} == RESULT_FIELDS
    RunResults(
        status="failed", mixer="rnn", task="text", seed=0, params=1, flops_per_token=2.0,
        metrics={"val/loss": math.nan}, best={}, tokens_per_s=math.inf, wall_s=1.0,
        wandb_run_id=None, checkpoints={"last": None, "best": None}, config={}, error="boom",
    ).write(tmp_path)  # fmt: skip
    data = json.loads((tmp_path / "results.json").read_text())  # strict JSON: NaN became null
    assert set(data) == RESULT_FIELDS
    assert data["metrics"]["val/loss"] is None and data["tokens_per_s"] is None
    assert data["history"] == "metrics.csv"


def test_readers_check_each_field_against_the_type_the_record_declares() -> None:
    """The JSON types ``mixerlab compare`` has always accepted; counts it averages (``params``,
    ``state_size``) are any number."""
    assert {
        **dict.fromkeys(
            ("status", "mixer", "task", "history", "error", "host", "updated_at", "wandb_run_id"),
            "string",
        ),
        **dict.fromkeys(("seed", "pid", "last_step"), "integer"),
        **dict.fromkeys(
            ("params", "flops_per_token", "state_size", "tokens_per_s", "wall_s"), "number"
        ),
        **dict.fromkeys(("best", "metrics", "config", "chance", "checkpoints", "budget"), "object"),
        "compute": "array",
    } == FIELDS


def test_what_the_writer_writes_the_readers_take(tmp_path: Path) -> None:
    RunResults(
        status="running", mixer="gmlp", task="mqar", seed=1, params=10, flops_per_token=5.0,
        metrics={"val/acc": 0.5}, best={"val/acc": 0.5}, tokens_per_s=1.0, wall_s=2.0,
        wandb_run_id="abc", checkpoints={"last": None}, config={"seed": 1}, error=None,
        budget={"measure": "params"}, state_size=64, pid=3, host="h", last_step=7,
    ).write(tmp_path)  # fmt: skip
    assert read_results(tmp_path)["last_step"] == 7
    assert shape_problem(read_results(tmp_path)) is None
    assert read_results(tmp_path / "elsewhere") is None


def test_the_record_loads_without_torch_or_lightning() -> None:
    """``mixerlab compare`` reads records: the module that defines them stays light."""
    code = (
        "import sys, mixerlab.lightning_modules.record; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'pytorch_lightning', 'lightning_fabric', 'lightning'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "[]", done.stderr[-2000:]


def test_an_older_records_config_reads_with_the_keys_added_since() -> None:
    old = {"status": "finished", "config": {"model": {"d_model": 64}, "seed": 0}}
    record = decode_record(json.dumps(old))
    # one stack, plainly causal, as then
    assert record["config"]["model"] == {"d_model": 64, "encoder": None, "prefix_lm": False}
    new = {"config": {"model": {"encoder": {"n_layers": 2}, "prefix_lm": True}}}
    assert decode_record(json.dumps(new)) == new  # a key a record has is kept
    assert decode_record(json.dumps({"config": {"seed": 0}})) == {"config": {"seed": 0}}
