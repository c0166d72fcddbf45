"""mixerlab dashboard: the W&B report planned from run folders, printed offline, built online.

The W&B server cannot be reached here, so the online path is checked up to the report object
``wandb_workspaces`` would save; the offline path end to end, as a user meets it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixerlab.experiments.cli.dashboard import STEP, build_report, main, plan_dashboard
from mixerlab.experiments.compare.runs import load_runs

METRICS = {"val/loss": 2.0, "val/acc@kv4": 0.5, "train/loss": 2.1, "train/device/mfu": 0.1}


def _write_run(root: Path, name: str, mixer: str, seed: int, loss: float, logger: dict) -> Path:
    run = root / name
    (run / "wandb" / f"offline-run-20261129_000000-{name}").mkdir(parents=True)
    results = {
        "status": "finished",
        "mixer": mixer,
        "task": "mqar",
        "seed": seed,
        "metrics": {**METRICS, "val/loss": loss},
        "best": {"val/loss": loss},
        "wandb_run_id": name,
        "config": {
            "mixer": {"name": mixer},
            "logger": logger,
            "optim": {"lr": 1e-3},
            "trainer": {"max_steps": 100},
            "task": {"name": "mqar"},
            "name": "mixers_mqar",
            "seed": seed,
        },
    }
    (run / "results.json").write_text(json.dumps(results))
    return run


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    logger = {"project": "mixerlab", "entity": "lab", "group": "mixers_mqar", "mode": "auto"}
    for i, (mixer, seed, loss) in enumerate([("attention", 0, 1.0), ("attention", 1, 1.2)]):
        _write_run(tmp_path, f"{i}_{mixer}", mixer, seed, loss, logger)
    _write_run(tmp_path, "2_conv", "conv", 0, 3.0, logger)
    return tmp_path


def test_the_plan_has_a_section_per_validation_set_and_every_logged_metric(sweep: Path) -> None:
    plan = plan_dashboard(load_runs([sweep]), "val/loss", "mixer", None)
    assert (plan.entity, plan.project, plan.groups) == ("lab", "mixerlab", ("mixers_mqar",))
    assert plan.sections == (
        ("validation", ("val/loss",)),
        ("validation: kv4", ("val/acc@kv4",)),
        ("training", ("train/loss",)),
        ("throughput", ("train/device/mfu",)),
    )
    assert "| attention |" in plan.summary and "| conv |" in plan.summary
    assert len(plan.offline_runs) == 3


def test_offline_it_prints_the_plan_and_how_to_build_it(
    sweep: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(sweep / "no-netrc"))
    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "W&B report 'mixers_mqar: val/loss by mixer' in lab/mixerlab" in out
    assert "section 'validation: kv4': val/acc@kv4" in out
    assert "nothing was built" in out and "wandb sync" in out and "offline-run-" in out


def test_the_report_groups_panels_by_mixer_over_the_sweeps_runs(sweep: Path) -> None:
    pytest.importorskip("wandb_workspaces", reason="pip install 'mixerlab[dashboard]'")
    report = build_report(plan_dashboard(load_runs([sweep]), "val/loss", "mixer", "mine"))
    assert (report.title, report.entity, report.project) == ("mine", "lab", "mixerlab")
    grids = [block for block in report.blocks if type(block).__name__ == "PanelGrid"]
    assert len(grids) == 4
    plotted = [panel.y for grid in grids for panel in grid.panels]
    assert plotted == [["val/loss"], ["val/acc@kv4"], ["train/loss"], ["train/device/mfu"]]
    panel = grids[0].panels[0]
    assert panel.x == STEP and panel.groupby.name == "mixer_label"
    assert grids[0].runsets[0].filters == "Group in ['mixers_mqar']"


def test_runs_not_logged_to_wandb_get_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_run(tmp_path, "0_attention", "attention", 0, 1.0, {})
    assert main([str(tmp_path)]) == 2
    assert "not logged to W&B (logger=csv or none)" in capsys.readouterr().err
