"""The dataset cache is checked against the checksums written with it: damaged, truncated,
missing or unrecorded files are rebuilt with a warning naming the file, and runs that build the
same cache at once both succeed."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import datasets
import pytest
import torch

from mixerlab.lightning_modules.tasks import _loading as loading
from mixerlab.lightning_modules.tasks._loading import (
    CHECKSUMS,
    _cache_damage,
    _generator_folder,
    cached_dataset,
)
from mixerlab.lightning_modules.tasks.selective_copy import SelectiveCopyDataModule

FEATURES = datasets.Features({"x": datasets.List(datasets.Value("int32"))})
N_ROWS = 200


def _rows(calls: Path, pause: float) -> Iterator[dict[str, list[int]]]:
    """The rows of the tests' dataset; each generation appends a line to ``calls``, then waits
    ``pause`` seconds (so that concurrent builds overlap)."""
    with calls.open("a") as f:
        f.write("generated\n")
    time.sleep(pause)
    for i in range(N_ROWS):
        yield {"x": [i, i + 1, i + 2]}


def _load(cache: Path, calls: Path, pause: float = 0.0) -> datasets.Dataset:
    return cached_dataset(
        _rows,
        cache_dir=cache,
        fingerprint="test-cache",
        features=FEATURES,
        gen_kwargs={"calls": calls, "pause": pause},
    )


def _generations(calls: Path) -> int:
    return len(calls.read_text().splitlines()) if calls.exists() else 0


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A freshly built cache: ``(cache dir, generation log, dataset folder)``."""
    cache, calls = tmp_path / "cache", tmp_path / "calls.txt"
    dataset = _load(cache, calls)
    return cache, calls, Path(dataset.cache_files[0]["filename"]).parent


def _flip_a_byte_keeping_size_and_mtime(path: Path) -> None:
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _garble_record(path: Path) -> None:
    (path.parent / CHECKSUMS).write_text('{"generator-train.arrow": ')


def _record_of_wrong_shape(path: Path) -> None:
    (path.parent / CHECKSUMS).write_text(json.dumps({"generator-train.arrow": "abc"}))


DAMAGE: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # name: (what is done to the arrow file or beside it, the file named, the reason given)
    "bytes changed": (_flip_a_byte_keeping_size_and_mtime, "generator-train.arrow", "checksum"),
    "truncated": (_truncate, "generator-train.arrow", "bytes, its checksum record says"),
    "deleted": (Path.unlink, "generator-train.arrow", "cannot be read"),
    "record garbled": (_garble_record, CHECKSUMS, "cannot be read"),
    "record of the wrong shape": (_record_of_wrong_shape, CHECKSUMS, "not a checksum record"),
    "record missing (older cache)": (
        lambda p: (p.parent / CHECKSUMS).unlink(),
        CHECKSUMS,
        "missing",
    ),
}


def test_a_build_records_every_file_and_a_reload_reuses_it(built) -> None:
    cache, calls, folder = built
    record = json.loads((folder / CHECKSUMS).read_text())
    assert set(record) == {p.name for p in folder.iterdir()} - {CHECKSUMS}
    assert _cache_damage(folder) is None
    again = _load(cache, calls)
    assert _generations(calls) == 1
    assert again.to_dict()["x"][:2] == [[0, 1, 2], [1, 2, 3]]


@pytest.mark.parametrize("damage", DAMAGE)
def test_damage_is_named_and_rebuilt(built, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    cache, calls, folder = built
    damage_fn, named, reason = DAMAGE[damage]
    damage_fn(folder / "generator-train.arrow")
    with caplog.at_level(logging.WARNING, logger="mixerlab.lightning_modules.tasks._loading"):
        rebuilt = _load(cache, calls)
    (message,) = [r.getMessage() for r in caplog.records]
    assert str(folder / named) in message and reason in message and "rebuilding" in message
    assert _generations(calls) == 2
    assert rebuilt.to_dict()["x"] == [[i, i + 1, i + 2] for i in range(N_ROWS)]
    assert _cache_damage(folder) is None  # the rebuild is recorded afresh


def test_a_damaged_info_file_is_caught_too(built, caplog: pytest.LogCaptureFixture) -> None:
    cache, calls, folder = built
    (folder / "dataset_info.json").write_text("{")  # datasets itself fails on this unnamed
    with caplog.at_level(logging.WARNING, logger="mixerlab.lightning_modules.tasks._loading"):
        assert len(_load(cache, calls)) == N_ROWS
    assert str(folder / "dataset_info.json") in caplog.text


def test_a_tampered_task_cache_gives_back_the_seeded_examples(tmp_path: Path) -> None:
    """The reported case: changed bytes in a task's cached split are rebuilt, not trained on."""

    def examples() -> SelectiveCopyDataModule:
        dm = SelectiveCopyDataModule(
            seq_len=16, num_data_tokens=4, num_train=200, num_val=50, cache_dir=str(tmp_path)
        )
        dm.setup("fit")
        return dm

    first = examples()
    val_file = Path(first.val_datasets["val"].cache_files[0]["filename"])
    _flip_a_byte_keeping_size_and_mtime(val_file)
    again = examples()
    assert torch.equal(again._vals[0].targets, first._vals[0].targets)
    assert torch.equal(again._vals[0].inputs, first._vals[0].inputs)


def _build_in_child(cache: str, calls: str, out: str) -> None:
    dataset = _load(Path(cache), Path(calls), pause=0.5)
    Path(out).write_text(json.dumps(dataset.to_dict()["x"]))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
@pytest.mark.parametrize("start", ["together on an unrecorded cache", "while the first records"])
def test_runs_building_the_same_cache_at_once_both_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start: str
) -> None:
    """Two runs at once: one builds (or rebuilds an older mixerlab's cache) and records it while
    the other waits, then checks the result and reads it. Recording is slowed down, so that a
    second run arriving in between would find a folder without a record and, but for the lock,
    remove it under the first."""
    cache, calls = tmp_path / "cache", tmp_path / "calls.txt"
    if start == "together on an unrecorded cache":
        _load(cache, calls)
        (_generator_folder(cache, "test-cache") / CHECKSUMS).unlink()
    checksums = loading._file_checksums

    def slow_checksums(folder: Path) -> dict[str, list]:
        time.sleep(0.5)
        return checksums(folder)

    monkeypatch.setattr(loading, "_file_checksums", slow_checksums)  # the children inherit it
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(target=_build_in_child, args=(cache, calls, tmp_path / f"out{i}.json"))
        for i in range(2)
    ]
    children[0].start()
    if start == "while the first records":  # the first has renamed its build into place
        for _ in range(400):
            if _generator_folder(cache, "test-cache").exists():
                break
            time.sleep(0.025)
    children[1].start()
    for child in children:
        child.join(timeout=120)
    assert [child.exitcode for child in children] == [0, 0]
    expected = [[i, i + 1, i + 2] for i in range(N_ROWS)]
    assert [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)] == [expected] * 2
    assert _generations(calls) == (1 if start == "while the first records" else 2)  # one (re)build
    assert _cache_damage(_generator_folder(cache, "test-cache")) is None
