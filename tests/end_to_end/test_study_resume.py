"""A study outlives its machine, with real (tiny) runs: a 2-job study writes stable job folders
and its study.yaml; a fresh clone (git keeps what .gitignore lets through: no checkpoint) re-run
with the same command trains nothing; with one job's record deleted it trains exactly that job;
a job whose record says `running` but whose checkpoints are gone trains from step 0, its stale
rows and record discarded; and without a study the run folders are the timestamped ones."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from configs import TINY

from mixerlab.experiments import cli
from mixerlab.experiments.cli.train import main
from mixerlab.experiments.run.study import LAUNCH_ONLY_KEYS, sets_any

ROOT = Path(__file__).resolve().parents[2]
COMMAND = ["-m", "seed=0,1", *TINY, "logger=none", "study=demo"]
SHARED = ",".join(sorted(o for o in TINY if not o.startswith("callbacks.")))
JOBS = [",".join(sorted([*SHARED.split(","), f"seed={seed}"])) for seed in (0, 1)]
COMPARE = ["compare", "studies/demo", "--metric", "val/loss"]
TABLES = ("comparison.md", "comparison.csv")
SKIPPED = "already finished: taken from the study's record, not trained"
RESTARTED = "no checkpoint of this unfinished run here: training it from the start"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return done.stdout


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data cache for the module: the study and its clones read the same corpus slice."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    """A working copy with the 2-job study trained and committed (with the repo's .gitignore)."""
    root = tmp_path_factory.mktemp("origin")
    shutil.copy(ROOT / ".gitignore", root / ".gitignore")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MIXERLAB_CACHE", str(cache))
        mp.chdir(root)
        assert main(COMMAND) == 0
        assert cli.main(COMPARE) == 0  # the study's comparison, committed with it
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "the demo study")
    return root


@pytest.fixture
def clone(study: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh clone of the study's repository, the working directory of the test."""
    git(tmp_path, "clone", "-q", str(study), "clone")
    monkeypatch.chdir(tmp_path / "clone")
    monkeypatch.setenv("MIXERLAB_CACHE", str(cache))
    return tmp_path / "clone"


def tracked(root: Path) -> dict[str, bytes]:
    return {p: (root / p).read_bytes() for p in git(root, "ls-files").split()}


def rows(job: Path) -> list[dict[str, str]]:
    with (job / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # trains the study: two tiny jobs
def test_a_study_writes_stable_job_folders_and_its_command(study: Path) -> None:
    runs = study / "studies" / "demo" / "runs"
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == JOBS
    assert JOBS[0] == (
        "debug=default,model.d_model=32,model.n_layers=1,seed=0,task.datamodule.batch_size=4,"
        "task.datamodule.max_train_tokens=4096,task.datamodule.seq_len=32"
    )
    for job in JOBS:
        assert json.loads((runs / job / "results.json").read_text())["status"] == "finished"
        assert (runs / job / "checkpoints" / "last.ckpt").is_file()  # here, not in git
    assert yaml.safe_load((study / "studies" / "demo" / "study.yaml").read_text()) == {
        "name": "demo",
        "commands": [
            {
                "overrides": [
                    o for o in COMMAND[1:] if not sets_any(o, (*LAUNCH_ONLY_KEYS, "study"))
                ],
                "multirun": True,
            }
        ],
    }  # fmt: skip; the progress bar and logger were this launch's, not the study's
    committed = git(study, "ls-files", "studies").split()
    assert not [p for p in committed if p.endswith((".ckpt", "train.log", "hydra.yaml"))]
    assert f"studies/demo/runs/{JOBS[1]}/.hydra/overrides.yaml" in committed


@pytest.mark.slow  # the study's fixture trains
def test_a_fresh_clone_rerun_trains_nothing_and_changes_no_record(
    clone: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not list(clone.rglob("*.ckpt"))  # what a clone has: records, no checkpoints
    before = tracked(clone)
    assert main(COMMAND) == 0
    out, err = capsys.readouterr()
    assert err.count(SKIPPED) == 2 and "mixerlab: attention on text" not in err  # built nothing
    assert f"mixerlab: study demo: 2 job(s) in {clone / 'studies' / 'demo' / 'runs'}" in out
    assert f"next: mixerlab compare {clone / 'studies' / 'demo'} --metric val/loss" in out
    assert tracked(clone) == before  # every record byte for byte, study.yaml too
    assert git(clone, "status", "--porcelain") == ""  # and nothing new that git would keep
    assert not list(clone.rglob("checkpoints"))


@pytest.mark.slow  # the study's fixture trains
def test_a_fresh_clone_compares_the_committed_study_byte_for_byte(clone: Path) -> None:
    """Nothing trains; the comparison drawn from the committed records is the committed one
    (run folders are written relative to the repository root, not as this machine's paths)."""
    comparison = clone / "studies" / "demo" / "comparison"
    committed = {name: (comparison / name).read_bytes() for name in TABLES}
    assert b"studies/demo/runs/" in committed["comparison.md"]
    assert cli.main(COMPARE) == 0
    assert {name: (comparison / name).read_bytes() for name in TABLES} == committed
    assert not list(clone.rglob("checkpoints"))


@pytest.mark.slow  # trains one job
def test_a_deleted_record_trains_exactly_that_job(
    clone: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = [clone / "studies" / "demo" / "runs" / job for job in JOBS]
    kept = tracked(clone)
    (jobs[1] / "results.json").unlink()  # its metrics.csv stays behind, stale
    assert main(COMMAND) == 0
    err = capsys.readouterr().err
    assert err.count(SKIPPED) == 1 and f"job {JOBS[0]} of study demo {SKIPPED}" in err
    assert err.count("mixerlab: attention on text") == 1  # one run was built and trained
    assert re.search(r"training it from the start \(\d+ rows? of metrics\.csv discarded\)", err)
    assert json.loads((jobs[1] / "results.json").read_text())["status"] == "finished"
    changed = sorted(p for p, data in tracked(clone).items() if kept[p] != data)
    assert all(p.startswith(f"studies/demo/runs/{JOBS[1]}/") for p in changed), changed
    assert (jobs[1] / "checkpoints" / "last.ckpt").is_file()
    assert not (jobs[0] / "checkpoints").exists()


@pytest.mark.slow  # trains one job
def test_an_unfinished_job_without_its_checkpoint_trains_from_step_0(
    clone: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = clone / "studies" / "demo" / "runs" / JOBS[1]
    first_step = rows(job)[0]["step"]  # where the job's own run logs first
    record = json.loads((job / "results.json").read_text())
    record.update(status="running", last_step=3, wandb_run_id="stale")  # killed mid-run
    spent = record["compute"]  # what the killed attempt cost
    (job / "results.json").write_text(json.dumps(record))
    with (job / "metrics.csv").open("a", newline="") as f:  # logged after its last checkpoint
        writer = csv.DictWriter(f, fieldnames=list(rows(job)[0]), lineterminator="\n")
        writer.writerows({"step": s, "wall_s": 1000 + s, "train/loss": 99.0} for s in range(4))
    assert main(COMMAND) == 0
    err = capsys.readouterr().err
    assert f"{RESTARTED} (its running record at step 3 and " in err
    assert err.count(SKIPPED) == 1
    assert "resuming from" not in err
    new = rows(job)
    assert new[0]["step"] == first_step  # its own first step, not the stale rows' steps
    assert all(float(row["wall_s"]) < 1000 for row in new)  # a new wall clock
    assert "99.0" not in [row.get("train/loss") for row in new]
    record = json.loads((job / "results.json").read_text())
    assert record["status"] == "finished" and record["wandb_run_id"] != "stale"
    assert record["last_step"] == 4
    # the discarded attempt's compute was spent all the same: the ledger keeps it, marked
    assert record["compute"][: len(spent)] == [{**s, "discarded": True} for s in spent]
    assert len(record["compute"]) == len(spent) + 1


@pytest.mark.slow  # trains one run
def test_without_a_study_runs_go_to_the_timestamped_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "logger=none"]) == 0
    (run,) = (tmp_path / "runs").glob("*/*")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", run.parent.name)
    assert re.fullmatch(r"\d\d-\d\d-\d\d-\d{6}_attention_text", run.name)
    assert (run / "results.json").is_file() and not (tmp_path / "studies").exists()
