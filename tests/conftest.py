"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Run every test on one intra-op thread: the tiny tensors of unit tests gain nothing from
    more, and on a busy machine thread oversubscription makes them up to ~10x slower. Training
    runs the tests start as subprocesses keep their own thread settings."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
