"""Which way a logged metric improves, read from its name; one rule for checkpoints, Optuna and
``mixerlab compare``. Kept free of heavy imports so that ``compare`` starts fast."""

from __future__ import annotations

import re

MINIMIZED = frozenset({"loss", "ppl", "perplexity", "bpb", "bpc", "error", "err"})
MAXIMIZED = frozenset({"acc", "accuracy", "f1", "auc"})


def metric_mode(metric: str) -> str | None:
    """``"min"`` for losses (loss, ppl, bpb), ``"max"`` for accuracies, None when the name says
    neither. The part after ``@`` (a validation set's name, e.g. ``val/acc@seq_len=256,kv=16``)
    is ignored."""
    words = set(re.split(r"[^a-z0-9]+", metric.split("@", 1)[0].lower()))
    if words & MINIMIZED:
        return "min"
    if words & MAXIMIZED:
        return "max"
    return None


def mode_of(metric: str) -> str:
    """A definite direction for what must pick one (checkpoints, W&B summaries, Optuna, a run's
    best values): ``metric_mode``, and ``"min"`` when the name says neither."""
    return metric_mode(metric) or "min"
