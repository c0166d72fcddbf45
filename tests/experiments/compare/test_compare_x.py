"""``mixerlab compare --x KEY``: the metric against a config key or run property, a line per group,
a point per config at its best learning rate, a panel per validation set; and the Zoology grid
preset it is made for. Synthetic run folders, no training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from configs import compose_config, run_config
from omegaconf import OmegaConf
from run_folders import write_run

from mixerlab.experiments.cli.compare import main
from mixerlab.experiments.compare import outputs
from mixerlab.experiments.compare.aggregate import build_comparison
from mixerlab.experiments.compare.plots import base, metric_vs_x
from mixerlab.experiments.compare.runs import load_runs
from mixerlab.experiments.compare.scaling import add_scaling

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ZOOLOGY_GRID = ("experiment=zoology_grid", "sweep=zoology_grid")


@pytest.fixture(autouse=True)
def only_the_x_plot(monkeypatch):
    """These tests read the scaling plot; the curves would only cost seconds."""
    plot = base._REGISTRY["metric_vs_x.png"]
    monkeypatch.setattr(base, "_REGISTRY", {plot.file: plot})
    monkeypatch.setattr(outputs, "metric_figures", lambda comparison: {})
    monkeypatch.setenv("COLUMNS", "200")


def scaled_run(
    root: Path,
    name: str,
    *,
    mixer: str,
    d_model: int,
    seed: int,
    acc: float,
    lr: float = 1e-3,
    seq_len: int = 64,
    best: dict[str, float] | None = None,
    **fields: float,
) -> Path:
    """A finished MQAR run at one width and length; ``best`` adds per-set metrics, ``fields``
    results.json properties (``tokens_per_s``, ``state_size``)."""
    run = write_run(
        root, name, mixer=mixer, seed=seed, loss=1 - acc, acc=acc, lr=lr, d_model=d_model,
        params=100 * d_model**2,
    )  # fmt: skip
    results = json.loads((run / "results.json").read_text())
    # a copy of the seed, as the task's data seed is: it must not split a point
    results["config"]["task"]["datamodule"] = {"seq_len": seq_len, "seed": seed}
    results["best"].update(best or {})
    results.update(fields)
    (run / "results.json").write_text(json.dumps(results))
    return run


def scaling_of(root: Path, by: list[str], x: list[str], metric: str = "val/acc"):
    runs = load_runs([root])
    comparison = build_comparison(runs, by, metric, None)
    return add_scaling(comparison, runs, x)


def xy(line, metric: str = "val/acc") -> list[tuple[float, float]]:
    return [(p.x.mean, round(p.y[metric].mean, 6)) for p in line.points]


def test_a_config_key_gives_a_line_per_group_and_a_point_per_value_at_its_best_lr(tmp_path):
    # attention's best lr is 1e-2 at width 32 and 1e-3 at 64: each point picks its own
    for seed in (0, 1):
        for lr, acc32, acc64 in ((1e-3, 0.30, 0.80), (1e-2, 0.50, 0.60)):
            for d, acc in ((32, acc32), (64, acc64)):
                scaled_run(tmp_path, f"a{d}_{lr}_{seed}", mixer="attention", d_model=d, seed=seed,
                           acc=acc + seed / 10, lr=lr)  # fmt: skip
        scaled_run(tmp_path, f"r32_{seed}", mixer="rnn", d_model=32, seed=seed, acc=0.2)
        scaled_run(tmp_path, f"r64_{seed}", mixer="rnn", d_model=64, seed=seed, acc=0.4)
    comparison = scaling_of(tmp_path, ["mixer", "model.d_model"], ["model.d_model"])
    (scaling,) = comparison.scaling
    assert scaling.key == "model.d_model" and scaling.panels == ("val/acc",)
    attention, rnn = scaling.lines
    assert (attention.name, rnn.name) == ("attention", "rnn")
    assert xy(attention) == [(32, 0.55), (64, 0.85)]  # mean over seeds 0 and 1
    assert [p.group.point for p in attention.points] == [(1e-2,), (1e-3,)]
    assert xy(rnn) == [(32, 0.2), (64, 0.4)]
    assert all(p.group.metric.n == 2 for line in scaling.lines for p in line.points)
    assert not comparison.warnings

    out = tmp_path / "out"
    assert (
        main([str(tmp_path), "--metric", "val/acc", "--x", "model.d_model", "--out", str(out)]) == 0
    )
    assert (out / "metric_vs_x.png").read_bytes()[:8] == PNG_MAGIC
    table = (out / "comparison.csv").read_text().splitlines()
    assert table[0].startswith("mixer,model.d_model,") and len(table) == 5  # d_model grouped too


def test_a_run_property_splits_each_line_into_its_configs(tmp_path):
    """--x tokens_per_s with --by mixer: a point per width, x averaged over the seeds."""
    for seed, speed in ((0, 900.0), (1, 1100.0)):
        scaled_run(tmp_path, f"a32_{seed}", mixer="attention", d_model=32, seed=seed, acc=0.3,
                   tokens_per_s=speed)  # fmt: skip
        scaled_run(tmp_path, f"a64_{seed}", mixer="attention", d_model=64, seed=seed, acc=0.6,
                   tokens_per_s=speed / 2)  # fmt: skip
    (scaling,) = scaling_of(tmp_path, ["mixer"], ["tokens_per_s"]).scaling
    (line,) = scaling.lines
    assert xy(line) == [(500, 0.6), (1000, 0.3)]
    assert (line.points[1].x.min, line.points[1].x.max) == (900, 1100)
    assert scaling.label == "training tokens/s"


def test_the_width_a_budget_chose_is_the_x_of_its_key(tmp_path):
    """A budget sweep records the d_model the user gave (64) and the one the budget solved."""
    for target, width, acc in ((100_000, 40, 0.3), (200_000, 56, 0.7)):
        run = scaled_run(tmp_path, f"b{target}", mixer="attention", d_model=64, seed=0, acc=acc)
        results = json.loads((run / "results.json").read_text())
        results["config"]["model"]["budget"] = {"params": target}
        results["budget"] = {"measure": "params", "target": target, "solved_for": "d_model",
                             "value": width}  # fmt: skip
        (run / "results.json").write_text(json.dumps(results))
    (scaling,) = scaling_of(tmp_path, ["mixer"], ["model.d_model"]).scaling
    (line,) = scaling.lines
    assert xy(line) == [(40, 0.3), (56, 0.7)]


def test_every_validation_set_gets_a_panel(tmp_path):
    for d in (32, 64):
        sets = {"val/acc@seq_len=64,kv=4": d / 100, "val/acc@seq_len=128,kv=8": d / 200}
        scaled_run(tmp_path, f"a{d}", mixer="attention", d_model=d, seed=0, acc=0.5, best=sets)
    (scaling,) = scaling_of(tmp_path, ["mixer"], ["model.d_model"]).scaling
    assert scaling.panels == ("val/acc", "val/acc@seq_len=64,kv=4", "val/acc@seq_len=128,kv=8")
    assert xy(scaling.lines[0], "val/acc@seq_len=128,kv=8") == [(32, 0.16), (64, 0.32)]


def test_points_at_one_x_that_differ_elsewhere_are_named(tmp_path):
    for seq_len in (64, 128):
        for d in (32, 64):
            scaled_run(tmp_path, f"a{d}_{seq_len}", mixer="attention", d_model=d, seed=0,
                       acc=d / seq_len, seq_len=seq_len)  # fmt: skip
    mixed = scaling_of(tmp_path, ["mixer"], ["model.d_model"])
    warned = [w for w in mixed.warnings if w.startswith("--x model.d_model: line attention")]
    assert len(warned) == 2 and "task.datamodule.seq_len" in warned[0]
    apart = scaling_of(tmp_path, ["mixer", "task.datamodule.seq_len"], ["model.d_model"])
    assert not [w for w in apart.warnings if w.startswith("--x")]
    assert [line.name for line in apart.scaling[0].lines] == [
        "mixer=attention, seq_len=64",
        "mixer=attention, seq_len=128",
    ]


def test_the_learning_rate_as_the_axis_keeps_every_lr(tmp_path):
    for lr, acc in ((1e-3, 0.2), (1e-2, 0.7)):
        scaled_run(tmp_path, f"a{lr}", mixer="attention", d_model=32, seed=0, acc=acc, lr=lr)
    (scaling,) = scaling_of(tmp_path, ["mixer", "optim.lr"], ["optim.lr"]).scaling
    assert xy(scaling.lines[0]) == [(1e-3, 0.2), (1e-2, 0.7)]


def test_without_x_the_metric_is_drawn_against_parameters(tmp_path):
    for d in (32, 64):
        scaled_run(tmp_path, f"a{d}", mixer="attention", d_model=d, seed=0, acc=d / 100)
    (scaling,) = scaling_of(tmp_path, ["mixer"], []).scaling
    assert scaling.key == "params" and xy(scaling.lines[0]) == [(102400, 0.32), (409600, 0.64)]
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "metric_vs_x.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    ("x", "said"),
    [
        ("model.d_modle", "no run's config has it. Did you mean model.d_model?"),
        ("d_model", "Did you mean model.d_model?"),
        ("mixer", "not a number in the runs (values: attention, rnn)"),
        ("state_size", "no run's results.json has it"),
        ("seed", "seeds are what each point is averaged over"),
    ],
)
def test_an_x_the_runs_lack_or_cannot_plot_is_exit_2_naming_the_keys_they_have(
    tmp_path, capsys, x, said
):
    scaled_run(tmp_path, "a", mixer="attention", d_model=32, seed=0, acc=0.5)
    scaled_run(tmp_path, "r", mixer="rnn", d_model=32, seed=0, acc=0.5)
    assert main([str(tmp_path), "--x", x]) == 2
    err = capsys.readouterr().err
    assert f"--x {x}: " in err and said in err
    if x != "seed":
        assert "Numeric keys the runs have: flops_per_token, model.d_model, " in err
        assert "params" in err and "task.datamodule.seq_len" in err


def test_a_property_some_runs_lack_leaves_those_points_out_and_says_so(tmp_path):
    scaled_run(tmp_path, "a", mixer="attention", d_model=32, seed=0, acc=0.5, state_size=4096)
    scaled_run(tmp_path, "r", mixer="rnn", d_model=32, seed=0, acc=0.4)  # written before it
    comparison = scaling_of(tmp_path, ["mixer"], ["state_size"])
    assert [line.name for line in comparison.scaling[0].lines] == ["attention"]
    said = "--x state_size: left off 1 config(s) without state_size: "
    assert any(w.startswith(said) and w.endswith("/r") for w in comparison.warnings)


def drawn(comparison, monkeypatch):
    figures = []
    monkeypatch.setattr(metric_vs_x, "to_png", lambda fig: figures.append(fig) or b"")
    metric_vs_x.metric_vs_x(comparison)
    return [ax for ax in figures[0].axes if ax.get_visible()]


def test_the_figure_has_a_panel_per_set_a_row_per_key_and_log_axes_over_decades(
    tmp_path, monkeypatch
):
    for d in (16, 64, 256):
        sets = {f"val/acc@set{i}": d / 1000 for i in range(3)}
        for mixer in ("attention", "rnn"):
            scaled_run(tmp_path, f"{mixer}{d}", mixer=mixer, d_model=d, seed=0, acc=0.5, best=sets)
    comparison = scaling_of(tmp_path, ["mixer"], ["model.d_model", "params"])
    axes = drawn(comparison, monkeypatch)
    assert len(axes) == 8  # (val/acc + 3 sets) x 2 keys, on rows of 3
    assert [ax.get_title() for ax in axes[:4]] == ["val/acc", "set0", "set1", "set2"]
    assert {ax.get_xscale() for ax in axes} == {"log"}  # 16..256 and 25.6k..6.5M
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["attention", "rnn"]
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["16", "64", "256"]
    assert axes[0].get_yscale() == "linear"  # an accuracy is never drawn on a log axis

    for d in (32, 64):
        scaled_run(tmp_path / "narrow", f"a{d}", mixer="attention", d_model=d, seed=0, acc=0.5)
    narrow = scaling_of(tmp_path / "narrow", ["mixer"], ["model.d_model"])
    assert [ax.get_xscale() for ax in drawn(narrow, monkeypatch)] == ["linear"]


def test_the_zoology_grid_grows_the_pairs_with_the_length():
    for seq_len, kv in ((128, 8), (256, 16)):  # and (64, 4), Zoology's three
        task = run_config(*ZOOLOGY_GRID, f"task.datamodule.seq_len={seq_len}")["task"]
        assert (task["name"], task["datamodule"]["num_kv_pairs"]) == ("mqar", kv)
    params = OmegaConf.to_container(compose_config(*ZOOLOGY_GRID, hydra=True).hydra)
    swept = params["sweeper"]["params"]
    assert swept["model.d_model"] == "32,64,128,256" and "task.datamodule.seq_len" in swept
    assert "optim.lr" in swept and "mixer" in swept
