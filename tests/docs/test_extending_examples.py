"""The extension examples of the README and docs/extending.md are real code: each block that
starts with ``# <path>`` is a file, the mixer passes the contract, the task yields what it
promises, and the files dropped into a copy of the tree train, list, sweep and compare with
nothing else changed."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from mixerlab import build_mixer, check_mixer
from mixerlab.lightning_modules.tasks import build_task

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_PAGES = (ROOT / "README.md", ROOT / "docs" / "extending.md")
MIXERLAB = str(Path(sys.executable).parent / "mixerlab")  # the installed console script


def example_files() -> dict[str, str]:
    """``{path: text}`` of every code block whose first line is a comment naming a file."""
    pattern = r"```(?:python|yaml)\n# (\S+)\n(.*?)```"
    return {
        path: text
        for page in EXAMPLE_PAGES
        for path, text in re.findall(pattern, page.read_text(), re.DOTALL)
    }


def _exec(path: str) -> dict:
    namespace: dict = {}
    exec(compile(example_files()[path], f"example {path}", "exec"), namespace)
    return namespace


def test_the_docs_show_a_mixer_a_task_and_a_plot_with_their_configs() -> None:
    paths = set(example_files())
    assert {"mixers/cummean.py", "conf/mixer/cummean.yaml"} <= paths
    assert {"lightning_modules/tasks/reverse.py", "conf/task/reverse.yaml"} <= paths
    assert "experiments/compare/plots/metric_vs_flops.py" in paths


@pytest.mark.usefixtures("scratch_registries")
def test_the_example_mixer_passes_the_contract() -> None:
    mixer_cls = _exec("mixers/cummean.py")["CumulativeMean"]
    assert type(build_mixer("cummean", d_model=8)) is mixer_cls
    check_mixer("cummean")


@pytest.mark.usefixtures("scratch_registries")
def test_the_snippets_run_beside_the_example_mixer(capsys: pytest.CaptureFixture) -> None:
    """The Python blocks that are not files (the imports, the contract check) run as shown."""
    _exec("mixers/cummean.py")
    snippets = [
        text
        for page in EXAMPLE_PAGES
        for text in re.findall(r"```python\n(?!# \S+\n)(.*?)```", page.read_text(), re.DOTALL)
    ]
    assert len(snippets) >= 2
    for text in snippets:
        exec(compile(text, "snippet", "exec"), {})
    assert "cummean" in capsys.readouterr().out  # the contract report names the mixer


@pytest.mark.usefixtures("scratch_registries")
def test_the_example_task_scores_the_reversed_tokens(tmp_path: Path) -> None:
    _exec("lightning_modules/tasks/reverse.py")
    dm = build_task("reverse", seed=0, cache_dir=str(tmp_path), seq_len=6, num_train=64)
    dm.prepare_data()
    dm.setup("fit")
    dm.check_ready()
    batch = next(iter(dm.train_dataloader()))
    inputs, targets = batch["input"], batch["target"]
    assert inputs.shape[1] == dm.max_len == 12
    assert (targets[:, :6] == -100).all()  # the tokens to reverse are not scored
    assert torch.equal(targets[:, 6:], inputs[:, :6].flip(1))  # then each one, last first
    assert (inputs[:, 6] == 1).all() and torch.equal(inputs[:, 7:], targets[:, 6:-1])


@pytest.mark.slow
def test_the_examples_are_one_file_each_plus_config(project_copy, tmp_path: Path) -> None:
    for path, text in example_files().items():
        project_copy.write(path, text)
    run_dir, out = tmp_path / "run", tmp_path / "comparison"

    listed = project_copy.run(MIXERLAB, "list")
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^\s+cummean\s+Causal running mean", listed.stdout, re.MULTILINE)
    assert re.search(r"^\s+reverse\s+Reverse - after the separator", listed.stdout, re.MULTILINE)

    sweep = project_copy.run(MIXERLAB, "wandb-sweep", "sweep=mixers")
    assert sweep.returncode == 0, sweep.stderr
    assert "- cummean\n" in sweep.stdout  # the mixer sweeps include it

    trained = project_copy.run(
        MIXERLAB, "train", "mixer=cummean", "task=reverse", "debug=default", "logger=none",
        "model.d_model=16", "model.n_layers=1", f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}", "callbacks.progress_bar=false",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    outcome = (results["status"], results["mixer"], results["task"])
    assert outcome == ("finished", "cummean", "reverse")

    compared = project_copy.run(MIXERLAB, "compare", str(run_dir), "--out", str(out))
    assert compared.returncode == 0, compared.stderr[-3000:]
    assert (out / "metric_vs_flops.png").read_bytes().startswith(b"\x89PNG")
    assert "metric_vs_flops.png" in (out / "comparison.md").read_text()
    assert "metric vs forward FLOPs per token" in (out / "report.html").read_text()
