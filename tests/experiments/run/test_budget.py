"""Budgets: ``model.budget.params`` / ``flops_per_token`` size every swept mixer's model to the
target (counted by building the model, not trusted from the solve), refuse a budget no setting
reaches with the numbers, and a run records how it was sized; compare shows the costs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from configs import compose_config, run_config
from run_folders import write_run

from mixerlab.experiments.cli import wandb_sweep
from mixerlab.experiments.compare.aggregate import build_comparison
from mixerlab.experiments.compare.runs import load_runs
from mixerlab.experiments.compare.tables import table_rows
from mixerlab.experiments.run.budget import Sizing, size_model
from mixerlab.experiments.run.schema import ConfigError
from mixerlab.experiments.run.train import train
from mixerlab.lightning_modules.tasks import build_task
from mixerlab.mixers import SequenceModel

MQAR = ("experiment=mqar",)
# the mixers `sweep=mixers` runs, read from the preset (its glob over conf/mixer/ expanded)
SWEPT = wandb_sweep.grid(["sweep=mixers", *MQAR])["parameters"]["mixer"]["values"]


def _sized(*overrides: str) -> tuple[Sizing, SequenceModel]:
    """The solve for a config, and the model its arguments build, counted on the meta device.
    The task is built but not prepared: its vocabulary and length are known from its settings."""
    config = run_config(*overrides)
    task = config["task"]
    dm = build_task(task["name"], seed=0, cache_dir=None, **task["datamodule"])
    sizing = size_model(config, dm)
    with torch.device("meta"):
        return sizing, SequenceModel(**sizing.arguments)


def test_the_sweep_covers_the_built_in_mixers() -> None:
    assert len(SWEPT) >= 12
    assert {"attention", "gmlp", "mamba", "s4d", "zoology_hybrid"} <= set(SWEPT)


@pytest.mark.parametrize("mixer", SWEPT)
def test_every_swept_mixer_is_sized_to_a_parameter_budget(mixer: str) -> None:
    sizing, model = _sized(*MQAR, f"mixer={mixer}", "model.budget.params=200000")
    budget = sizing.budget
    assert budget.measure == "params" and budget.solved_for == "d_model"
    assert model.num_params() == budget.reached  # every parameter, tied embeddings once
    assert abs(model.num_params() / 200_000 - 1) <= 0.05
    assert model.d_model == budget.value == sizing.arguments["d_model"]
    assert sizing.arguments["ffn_mult"] == run_config(*MQAR)["model"]["ffn_mult"]  # as given


@pytest.mark.parametrize("mixer", ["attention", "mamba"])
def test_a_flop_budget_is_met_at_the_tasks_length(mixer: str) -> None:
    sizing, model = _sized(*MQAR, f"mixer={mixer}", "model.budget.flops_per_token=400000")
    assert model.max_len == 128  # MQAR's longest validation set
    flops = model.flops_per_token(model.max_len)
    assert flops == sizing.budget.reached and abs(flops / 400_000 - 1) <= 0.05


def test_width_rounding_that_misses_the_tolerance_is_refused_and_ffn_mult_reaches_it() -> None:
    tight = (*MQAR, "model.budget.params=200000", "model.budget.tolerance=0.001")
    # attention's widths step by n_heads=4: 186,560 at d_model 80 and 203,952 at 84
    with pytest.raises(ConfigError) as info:
        _sized(*tight)
    message = str(info.value)
    assert "model.budget.params=200,000 cannot be reached within 0.1%" in message
    assert "186,560 (d_model 80) and 203,952 (d_model 84)" in message
    assert "model.budget.solve_for=ffn_mult" in message
    sizing, model = _sized(*tight, "model.budget.solve_for=ffn_mult")
    assert model.d_model == 64 and abs(model.num_params() / 200_000 - 1) <= 0.001
    hidden = model.blocks[0].ffn.up.out_features
    assert sizing.arguments["ffn_mult"] == sizing.budget.value == hidden / 64


def test_a_budget_below_what_does_not_shrink_names_the_smallest_reachable() -> None:
    # gMLP's spatial weights are max_len x max_len per layer whatever the width
    _, smallest = _sized(*MQAR, "mixer=gmlp", "model.d_model=1")
    with pytest.raises(ConfigError) as info:
        _sized(*MQAR, "mixer=gmlp", "model.budget.params=20000")
    message = str(info.value)
    assert "model.budget.params=20,000 cannot be reached" in message and "'gmlp'" in message
    assert f"at least {smallest.num_params():,}" in message and "max_len (128" in message


def test_a_budget_beyond_every_width_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"params=1,000,000,000,000 .* lower the budget"):
        _sized(*MQAR, "model.budget.params=1000000000000")


def test_bad_budget_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="sets both params and flops_per_token"):
        run_config("model.budget.params=1000", "model.budget.flops_per_token=1000")
    with pytest.raises(ConfigError, match=r"model\.budget\.solve_for='width' is not allowed"):
        run_config("model.budget.solve_for=width")
    ffn_mult = ("model.budget.params=200000", "model.budget.solve_for=ffn_mult")
    with pytest.raises(ConfigError, match=r"model\.ffn=none has none"):
        _sized(*MQAR, *ffn_mult, "model.ffn=none")


def test_without_a_budget_the_model_is_as_configured() -> None:
    sizing, model = _sized(*MQAR)
    assert sizing.budget is None and model.d_model == 64


def test_a_run_records_its_budget_and_state_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MIXERLAB_CACHE", str(tmp_path / "cache"))
    tiny = "[{seq_len:32,num_kv_pairs:4,n_examples:32}]"
    cfg = compose_config(
        *MQAR, "debug=default", "logger=none", "callbacks.progress_bar=false",
        "model.n_layers=1", "model.budget.params=42000",
        f"task.datamodule.train_configs={tiny}", f"task.datamodule.test_configs={tiny}",
        "task.datamodule.batch_size=8",
    )  # fmt: skip
    with caplog.at_level("INFO", logger="mixerlab.experiments.run.train"):
        train(cfg, tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    budget = results["budget"]
    assert results["status"] == "finished" and budget["measure"] == "params"
    assert budget["target"] == 42_000 and budget["reached"] == results["params"]
    assert budget["solved_for"] == "d_model" and abs(results["params"] / 42_000 - 1) <= 0.05
    assert results["config"]["model"]["budget"]["params"] == 42_000  # the config as given
    # attention's KV cache at the task's length: keys and values, d_model each, per position
    assert results["state_size"] == 2 * budget["value"] * 32
    assert f"sized to params 42,000 by d_model={budget['value']}" in caplog.text


def test_compare_shows_costs_and_budgets_in_the_table(tmp_path: Path) -> None:
    for seed in (0, 1):
        for mixer, state, width in (("attention", 16384, 84), ("ssm", 4672, 73)):
            run = write_run(tmp_path, f"{mixer}{seed}", mixer=mixer, seed=seed, loss=1.0)
            results = json.loads((run / "results.json").read_text())
            results["state_size"] = state
            results["budget"] = {
                "measure": "params", "target": 200000, "reached": 201000.0,
                "solved_for": "d_model", "value": width, "tolerance": 0.05,
            }  # fmt: skip
            (run / "results.json").write_text(json.dumps(results))
    write_run(tmp_path, "rnn0", mixer="rnn", seed=0, loss=1.5)  # older: no state size, no budget
    comparison = build_comparison(load_runs([tmp_path]), ["mixer"], "val/loss", None)
    header, rows = table_rows(comparison)
    cells = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert cells["attention"]["state size"] == "16.4k" and cells["ssm"]["state size"] == "4.67k"
    assert cells["attention"]["budget"] == "params 200k by d_model=84"
    assert cells["rnn"]["state size"] == "-" and cells["rnn"]["budget"] == "-"
    assert {"params", "FLOPs/token"} <= set(header)


def test_widths_the_mixer_refuses_are_skipped() -> None:
    # rope rotates pairs of each head's dimensions: d_model a multiple of n_heads x 2
    _, model = _sized(*MQAR, "model.pos=rope", "model.budget.params=150000")
    assert model.d_model % 8 == 0 and abs(model.num_params() / 150_000 - 1) <= 0.05


def test_state_size_sums_the_layers_and_is_none_where_decoding_is_not() -> None:
    def model(mixer: str, **kwargs: Any) -> SequenceModel:
        with torch.device("meta"):
            return SequenceModel(16, 32, 2, mixer=mixer, max_len=128, **kwargs)

    attention, rnn = model("attention"), model("rnn")
    assert attention.state_size(64) == 2 * (2 * 64 * 32)  # two layers' KV caches
    assert attention.state_size(128) == 2 * attention.state_size(64)  # grows with the length
    assert rnn.state_size(128) == rnn.state_size(64) > 0  # a recurrence's does not
    assert model("rnn", causal=False, num_classes=2).state_size(64) is None  # encoders don't decode
    rnn.blocks[1].mixer.state_size = lambda seq_len: None  # a mixer that does not report it
    assert rnn.state_size(64) is None
