"""Sweeps: the sweep/launcher presets and the W&B sweep file compose into valid runs, and tiny real
sweeps (basic, joblib, Optuna) go on past a failed job and leave what `mixerlab compare` reads."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import pytest
import yaml
from configs import compose_config, conf_options, run_config
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from mixerlab.experiments.cli import compare, wandb_sweep
from mixerlab.experiments.run.mixer_node import mixer_label, mixer_names
from mixerlab.mixers import available_mixers

GRID_SWEEPS = [name for name in conf_options("sweep") if name != "optuna"]
# grids of one experiment's settings
OWN_EXPERIMENT = {
    "zoology_grid": "experiment=zoology_grid",
    "designs": "experiment=seq2seq_designs",
}
# A design (conf/design/, a global preset) shows in the config as the layout it sets.
DESIGN_LAYOUTS = {"encoder_decoder": "seq2seq", "decoder_only": "prefix", "encoder_only": "tagging"}
# every conf/mixer option but the two templates, plugin (needs a name) and hybrid (a pattern),
# and based_sliding, whose 3-layer pattern fits no 2-layer experiment
LEFT_OUT = ("plugin", "hybrid", "based_sliding")
SHIPPED_MIXERS = {name for name in conf_options("mixer") if name not in LEFT_OUT}


def _value(config: dict[str, Any], key: str) -> Any:
    """What an override ``key=...`` set: a mixer option is its label (its name, or a preset's
    label), another group's choice its ``name``, else a dotted key."""
    if key == "design":
        layout = config["task"]["datamodule"]["layout"]
        return next(name for name, laid in DESIGN_LAYOUTS.items() if laid == layout)
    node: Any = config
    for part in key.split("."):
        node = node[part]
    if key == "mixer":
        return mixer_label(node)
    return node["name"] if isinstance(node, dict) else node


def _sweep_jobs(*overrides: str) -> dict[str, list[str]]:
    """Each swept key's values as the overrides the jobs get (``key=value``), globs expanded."""
    parameters = wandb_sweep.grid(overrides)["parameters"]
    return {
        key: [f"{key}={value}" for value in p["values"]]
        for key, p in parameters.items()
        if "values" in p
    }


# ------------------------------------------------------------------------- composing presets
@pytest.mark.slow  # a config per swept value (about 3 s a preset); one job each is checked fast
@pytest.mark.parametrize("preset", GRID_SWEEPS)
def test_grid_sweep_presets_name_the_sweep_and_every_value_is_a_valid_run(preset: str) -> None:
    own = [OWN_EXPERIMENT[preset]] if preset in OWN_EXPERIMENT else []
    jobs = _sweep_jobs(f"sweep={preset}", *own)
    assert "seed" in jobs and len(jobs) >= 2
    names = set()
    for key, overrides in jobs.items():
        for override in overrides:
            config = run_config(f"sweep={preset}", *own, override)
            value = yaml.safe_load(override.split("=", 1)[1])
            assert _value(config, key) == value
            assert config["logger"]["group"] == config["name"]
            names.add(config["name"])
    # the sweep's name: the W&B group and part of the sweep folder, the same for every job
    assert len(names) == 1 and names.pop().startswith(f"{preset}_")


def test_mixer_sweeps_cover_every_shipped_mixer() -> None:
    """The presets glob conf/mixer/: every built-in mixer and mixer preset, without a list.
    A registered mixer without a conf file of its own (ssm, base_conv) is built by a preset."""
    # no plugin is installed in the test env; hybrid, registered too, is a template (a pattern)
    built = {
        name for o in SHIPPED_MIXERS for name in mixer_names(run_config(f"mixer={o}")["mixer"])
    }
    assert set(available_mixers()) - {"hybrid"} <= built
    for preset in ("mixers", "mixers_lr"):
        assert {o.split("=")[1] for o in _sweep_jobs(f"sweep={preset}")["mixer"]} == SHIPPED_MIXERS


def test_sweep_name_follows_the_task_and_the_command_line() -> None:
    assert run_config("sweep=mixers", "task=mqar")["name"] == "mixers_mqar"
    assert run_config("sweep=lr_grid", "mixer=rnn")["name"] == "lr_grid_rnn_text"
    assert run_config("sweep=mixers", "name=ablation")["logger"]["group"] == "ablation"
    sweep_dir = compose_config("sweep=mixers", "name=ablation", hydra=True).hydra.sweep.dir
    assert sweep_dir.endswith("_ablation")  # the sweep's folder carries its name


def test_joblib_launcher_preset() -> None:
    cfg = compose_config("sweep=mixers", "launcher=joblib", hydra=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher)
    assert launcher["_target_"].endswith("JoblibLauncher") and launcher["n_jobs"] == 2
    assert cfg.hydra.sweeper._target_.endswith("BasicSweeper")  # the sweep itself is unchanged
    run_config("sweep=mixers", "launcher=joblib")


def test_slurm_launcher_preset_sets_resources_and_threads() -> None:
    cfg = compose_config(
        "launcher=slurm", "hydra.launcher.cpus_per_task=6", "trainer=gpu", hydra=True
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1
    setup = OmegaConf.to_container(launcher.setup, resolve=True)
    assert "export OMP_NUM_THREADS=6" in setup and "export MKL_NUM_THREADS=6" in setup
    assert run_config("launcher=slurm", "trainer=gpu")["trainer"]["accelerator"] == "gpu"


@pytest.mark.parametrize(
    ("monitor", "direction"),
    [("val/loss", "minimize"), ("val/bpb", "minimize"), ("val/acc", "maximize"),
     ("'val/acc@seq_len=64,kv=16'", "maximize")],
)  # fmt: skip
def test_optuna_direction_follows_the_monitored_metric(monitor: str, direction: str) -> None:
    cfg = compose_config("sweep=optuna", f"callbacks.checkpoint.monitor={monitor}", hydra=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == direction


@pytest.mark.slow  # Optuna takes seconds to import
def test_optuna_search_space_is_valid_overrides() -> None:
    cfg = compose_config("sweep=optuna", "mixer=rnn", hydra=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper.study_name == "optuna_rnn_text" and sweeper.sampler.seed == 0
    params = OmegaConf.to_container(sweeper.params)
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    # imported here: Optuna and W&B's sweep code take seconds to import, for one test each
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override
    from optuna.distributions import LogUniformDistribution, UniformDistribution

    kinds = {o.key_or_group: create_optuna_distribution_from_override(o) for o in parsed}
    assert isinstance(kinds["optim.lr"], LogUniformDistribution)
    assert isinstance(kinds["optim.weight_decay"], UniformDistribution)
    for key, dist in kinds.items():  # both ends of every range make a valid run
        for value in (dist.low, dist.high):
            config = run_config("sweep=optuna", "mixer=rnn", f"{key}={value}")
            assert _value(config, key) == pytest.approx(value)


# ---------------------------------------------------------------------------- W&B sweep files
def _wandb_overrides(parameters: dict[str, Any]) -> tuple[list[str], dict[str, list[str]]]:
    """The agent's ${args_no_hyphens}, rendered by W&B's own code: fixed ones, swept ones."""

    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    def render(name: str, value: Any) -> str:
        (arg,) = create_sweep_command_args({"args": {name: {"value": value}}})["args_no_hyphens"]
        return arg

    fixed = [render(k, p["value"]) for k, p in parameters.items() if "value" in p]
    swept = {k: [render(k, v) for v in p["values"]] for k, p in parameters.items() if "values" in p}
    return fixed, swept


@pytest.mark.slow  # W&B's sweep code takes seconds to import
@pytest.mark.parametrize("preset", GRID_SWEEPS)
def test_wandb_sweep_file_runs_the_presets_jobs(preset: str, tmp_path: Path) -> None:
    out = tmp_path / "sweep.yaml"
    experiment = OWN_EXPERIMENT.get(preset, "experiment=mqar")
    assert wandb_sweep.main([f"sweep={preset}", experiment, "--out", str(out)]) == 0
    sweep = yaml.safe_load(out.read_text())
    assert sweep["command"][2:] == ["-m", "mixerlab.experiments.cli.train", "${args_no_hyphens}"]
    assert sweep["project"] == run_config()["logger"]["project"]
    fixed, swept = _wandb_overrides(sweep["parameters"])
    assert experiment in fixed and swept
    assert swept == _sweep_jobs(f"sweep={preset}", experiment)  # the multirun's grid
    # An agent's run is the fixed overrides plus one value per swept key (each value is checked
    # as a run of the preset above): it is a valid run in the sweep's group.
    config = run_config(*fixed, *(values[-1] for values in swept.values()))
    assert config["name"] == sweep["name"]
    task = run_config(experiment)["task"]["name"]
    assert sweep["name"].startswith(f"{preset}_") and sweep["name"].endswith(f"_{task}")
    assert config["task"]["name"] == task


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["experiment=mqar"], "name a sweep preset"),
        (["sweep=optuna"], "not a grid sweep"),
        (["sweep=mixers", "seed=0,1"], "put swept values in the preset"),
        (["sweep=mixers", "launcher=joblib"], "agents launch the runs"),
    ],
)
def test_wandb_sweep_refuses_what_a_grid_file_cannot_hold(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert wandb_sweep.main(argv) == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------- real sweeps (tiny, CPU)
TINY = [
    "debug=default",
    "model.d_model=16",
    "model.n_layers=1",
    "task.datamodule.seq_len=32",
    "task.datamodule.batch_size=4",
    "task.datamodule.max_train_tokens=4096",
    "callbacks.progress_bar=false",
]
# Records the job's torch thread count in its run dir; fails the job whose tag is fail_on.
PROBE = """
import json
from pathlib import Path

import pytorch_lightning as pl
import torch


class Probe(pl.Callback):
    def __init__(self, tag, fail_on=""):
        self.tag, self.fail_on = tag, fail_on

    def on_train_start(self, trainer, pl_module):
        info = {"threads": torch.get_num_threads()}
        (Path(trainer.default_root_dir) / "probe.json").write_text(json.dumps(info))

    def on_train_batch_end(self, trainer, *args):
        if self.tag == self.fail_on and trainer.global_step >= 2:
            raise RuntimeError(f"deliberate failure in {self.tag}")
"""


def _probe(fail_on: str) -> str:
    spec = f"_target_:probe.Probe,tag:'${{mixer.name}}-${{seed}}',fail_on:{fail_on}"
    return f"callbacks.extra=[{{{spec}}}]"


@pytest.fixture(scope="module")
def sweep_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """W&B off (the group is checked in the config), one data cache for this module, the probe."""
    helpers = tmp_path_factory.mktemp("helpers")
    (helpers / "probe.py").write_text(PROBE)
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "MIXERLAB_CACHE": str(tmp_path_factory.mktemp("cache")),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(helpers), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("OMP_NUM_THREADS", None)  # the launchers decide
    return env


def _train(env: dict[str, str], cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mixerlab.experiments.cli", "train", "-m", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _results(sweep: Path) -> dict[str, dict[str, Any]]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))}


@pytest.mark.slow
def test_a_failed_job_is_recorded_the_sweep_goes_on_and_compare_lists_it_apart(
    sweep_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = tmp_path / "sweep"
    proc = _train(
        {**sweep_env, "OMP_NUM_THREADS": "1"}, tmp_path, "sweep=mixers", "mixer=attention,conv",
        "seed=0,1", *TINY, _probe(fail_on="attention-0"), f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    # the first job fails; the three after it still run; the sweep then exits 1, naming the job
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Error executing job with overrides" in proc.stderr and "seed=0" in proc.stderr
    assert "could not be composed" not in proc.stderr
    results = _results(sweep)
    assert list(results) == ["0_attention_text", "1_attention_text", "2_conv_text", "3_conv_text"]
    failed = results.pop("0_attention_text")
    assert failed["status"] == "failed" and "deliberate failure in attention-0" in failed["error"]
    assert {r["status"] for r in results.values()} == {"finished"}
    assert all(r["config"]["logger"]["group"] == "mixers_text" for r in results.values())
    # the end-of-sweep summary: where the sweep went, a line per job, what to run next
    assert f"mixerlab: sweep of 4 job(s) in {sweep}" in proc.stdout
    assert re.search(r"0_attention_text\s+failed", proc.stdout)
    assert re.search(r"3_conv_text\s+finished\s+best val/loss \d", proc.stdout)
    assert f"next: mixerlab compare {sweep} --metric val/loss" in proc.stdout

    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "report"
    assert compare.main([str(sweep), "--out", str(out)]) == 0
    with (out / "comparison.csv").open() as f:
        rows = {row["mixer"]: row for row in csv.DictReader(f)}
    assert rows["attention"]["n"] == "1" and rows["attention"]["seeds"] == "1"
    assert rows["conv"]["n"] == "2"
    kept = results["1_attention_text"]["best"]["val/loss"]
    assert float(rows["attention"]["val/loss_mean"]) == pytest.approx(kept)
    report = (out / "comparison.md").read_text()
    failed_part = report.split("## Failed and unfinished runs")[1]
    assert "0_attention_text" in failed_part and "deliberate failure" in failed_part


@pytest.mark.slow
def test_joblib_jobs_run_in_worker_processes_without_oversubscription(
    sweep_env: dict[str, str], tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    proc = _train(
        sweep_env, tmp_path, "launcher=joblib", "mixer=attention", "mixer.n_heads=3,4", *TINY,
        _probe(fail_on="nothing"), f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    # job 0 cannot be built (n_heads must divide d_model 16): a config error inside a worker is
    # that job's failure, named by the job and leaving no folder, so the other job runs and the
    # sweep exits 1 (not 2, a command-line error)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "could not be composed" not in proc.stderr
    assert "mixerlab train: job 0 (" in proc.stderr and "divisible by n_heads 3" in proc.stderr
    results = _results(sweep)
    assert "0_attention_text" not in results and not (sweep / "0_attention_text").exists()
    assert results["1_attention_text"]["status"] == "finished"
    probe = json.loads((sweep / "1_attention_text" / "probe.json").read_text())
    assert probe["threads"] == max(joblib.cpu_count() // 2, 1)  # cores // n_jobs


@pytest.mark.slow
def test_optuna_search_returns_the_best_monitored_metric(
    sweep_env: dict[str, str], tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    proc = _train(
        {**sweep_env, "OMP_NUM_THREADS": "1"}, tmp_path, "sweep=optuna", "hydra.sweeper.n_trials=2",
        *TINY, f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = _results(sweep)
    assert len(results) == 2 and {r["status"] for r in results.values()} == {"finished"}
    lrs = {r["config"]["optim"]["lr"] for r in results.values()}
    assert len(lrs) == 2 and all(1e-4 <= lr <= 3e-2 for lr in lrs)
    study = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = min(r["best"]["val/loss"] for r in results.values())
    assert study["best_value"] == pytest.approx(best)
