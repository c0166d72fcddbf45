"""How ``compare --maps`` names each task's figure: one task, one ``maps.png``; tasks sharing a
name (a scaling grid's lengths) told apart by the settings in which they differ."""

from __future__ import annotations

from mixerlab.experiments.maps.comparison import task_labels


def task(name: str, **datamodule: object) -> dict:
    return {"name": name, "datamodule": {"batch_size": 64, **datamodule}}


def test_one_task_is_maps_png() -> None:
    assert task_labels([task("mqar", seq_len=64)]) == [("mqar", "maps.png")]


def test_tasks_of_one_name_are_told_apart_by_what_differs() -> None:
    tasks = [task("mqar", seq_len=64), task("mqar", seq_len=128), task("induction", seq_len=64)]
    assert task_labels(tasks) == [
        ("mqar (seq_len=64)", "maps_mqar_0.png"),
        ("mqar (seq_len=128)", "maps_mqar_1.png"),
        ("induction", "maps_induction.png"),
    ]
