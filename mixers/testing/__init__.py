"""Contract checks for token mixers, usable on any mixer class or registered name.

A plugin author proves a new mixer in one line::

    from mixerlab.mixers.testing import check_mixer
    check_mixer(MyMixer)            # or check_mixer("my_mixer", hparams={"width": 4})

It returns a :class:`ContractReport`: each check in each mode, passed or skipped and why
(``print(report)``, or ``verbose=True``). Every check builds small fp32 instances (CPU, fixed
seeds, no global RNG side effects); a broken rule raises :class:`ContractError` (an
``AssertionError``) whose message names the mixer, the mode and what broke. ``CHECKS`` maps each
check's name to a :class:`Check`, so a test suite can parametrize over them
(``tests/mixers/test_every_mixer.py`` does, over every registered mixer). Plain PyTorch and the
standard library only: no pytest, so the checks run anywhere.
"""

from __future__ import annotations

from typing import Any

import torch

from mixerlab.mixers._contract import TokenMixer
from mixerlab.mixers.testing import checks as _checks  # noqa: F401  (registers the checks in CHECKS)
from mixerlab.mixers.testing import decoding as _decoding  # noqa: F401  (then the decoding checks)
from mixerlab.mixers.testing.case import CHECKS, Check, ContractError, MixerCase, max_abs_diff
from mixerlab.mixers.testing.report import CheckOutcome, ContractReport

__all__ = [
    "BF16_TOLERANCE",
    "CHECKS",
    "Check",
    "CheckOutcome",
    "ContractError",
    "ContractReport",
    "MixerCase",
    "check_mixer",
    "max_abs_diff",
]

# The contract's tolerance under bf16 autocast: atol + rtol x the reference's largest magnitude.
# bf16 rounds a value by up to 2**-9 of its size; paths that should agree (forward against prefill
# and steps, a padded row against itself alone) round at different places. Measured over every
# shipped preset (tests/mixers/test_bf16.py): rtol 1e-2 passed all but GLA's prefill-then-step
# (1.3% of its output's scale), 5e-3 failed five presets by one bf16 step.
BF16_TOLERANCE: dict[str, float] = {"atol": 1e-3, "rtol": 2e-2}


def check_mixer(
    mixer: str | type[TokenMixer],
    *,
    d_model: int = 32,
    max_len: int = 24,
    hparams: dict[str, Any] | None = None,
    causal: bool | None = None,
    seed: int = 0,
    atol: float = 1e-5,
    rtol: float = 0.0,
    perturb: float = 0.0,
    autocast: torch.dtype | None = None,
    verbose: bool = False,
) -> ContractReport:
    """Run every check that applies, in both modes when ``causal`` is None, and return the
    report of what passed and what was skipped and why (``verbose`` prints it too).

    All checks run before anything is raised, so one ContractError lists every broken rule.
    ``perturb`` adds Gaussian noise of that std to every parameter after init, for mixers whose
    init barely mixes positions (so a leak would not show). ``autocast`` (e.g. torch.bfloat16)
    runs every check under autocast to that dtype, the path of ``trainer.precision=bf16-mixed``,
    with a tolerance its rounding allows: ``atol + rtol * max |reference|``
    (``**BF16_TOLERANCE`` for bf16).
    """

    def case(mode: bool) -> MixerCase:  # a fresh one per check: each draws its inputs anew
        return MixerCase(
            mixer,
            mode,
            d_model,
            max_len,
            dict(hparams or {}),
            seed,
            atol=atol,
            rtol=rtol,
            perturb=perturb,
            autocast=autocast,
        )

    report = ContractReport(case(True).name)
    for mode in (True, False) if causal is None else (causal,):
        for check in CHECKS.values():
            checked = case(mode)
            reason = check.skip_reason(checked.cls, mode, autocast)
            if reason:
                report.outcomes.append(CheckOutcome(check.name, mode, "skipped", reason))
                continue
            try:
                check.run_case(checked)
            except AssertionError as exc:
                report.outcomes.append(CheckOutcome(check.name, mode, "failed", str(exc)))
            else:
                report.outcomes.append(CheckOutcome(check.name, mode, "passed"))
    if verbose:
        print(report)
    if report.failures:
        raise ContractError(
            f"{len(report.failures)} contract check(s) failed:\n"
            + "\n".join(f"[{o.check}] {o.detail}" for o in report.failures)
        )
    return report
