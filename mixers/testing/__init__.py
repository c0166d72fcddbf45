"""Contract checks for token mixers, usable on any mixer class or registered name.

A plugin author proves a new mixer in one line::

    from mixers.testing import check_mixer
    check_mixer(MyMixer)            # or check_mixer("my_mixer", hparams={"width": 4})

Every check builds small fp32 instances (CPU, fixed seeds, no global RNG side effects) and raises
:class:`ContractError` (an ``AssertionError``) whose message names the mixer, the mode and what
broke. ``CHECKS`` maps each check's name to a :class:`Check`, so a test suite can parametrize over
them (``tests/test_contract.py`` does, over every registered mixer). Plain PyTorch and the standard
library only: no pytest, so the checks run anywhere.
"""

from __future__ import annotations

from typing import Any

from mixers.base import TokenMixer
from mixers.testing import checks as _checks  # noqa: F401  (registers the checks in CHECKS)
from mixers.testing.case import CHECKS, Check, ContractError, MixerCase, max_abs_diff

__all__ = ["CHECKS", "Check", "ContractError", "MixerCase", "check_mixer", "max_abs_diff"]


def check_mixer(
    mixer: str | type[TokenMixer],
    *,
    d_model: int = 32,
    max_len: int = 24,
    hparams: dict[str, Any] | None = None,
    causal: bool | None = None,
    seed: int = 0,
    atol: float = 1e-5,
    perturb: float = 0.0,
) -> None:
    """Run every check that applies, in both modes when ``causal`` is None.

    All checks run before anything is raised, so one ContractError lists every broken rule.
    ``perturb`` adds Gaussian noise of that std to every parameter after init, for mixers whose
    init barely mixes positions (so a leak would not show).
    """
    modes = (True, False) if causal is None else (causal,)
    failures: list[str] = []
    for mode in modes:
        for check in CHECKS.values():
            case = MixerCase(
                mixer, mode, d_model, max_len, dict(hparams or {}), seed, atol, perturb
            )
            if not check.applies(case.cls, mode):
                continue
            try:
                check.run(case)
            except AssertionError as exc:
                failures.append(f"[{check.name}] {exc}")
    if failures:
        raise ContractError(f"{len(failures)} contract check(s) failed:\n" + "\n".join(failures))
