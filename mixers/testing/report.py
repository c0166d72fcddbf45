"""What :func:`mixerlab.mixers.testing.check_mixer` ran: one outcome per (mode, check), and why a
check was skipped, so a passing run says what it proved and what it did not look at."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["passed", "failed", "skipped"]


@dataclass(frozen=True)
class CheckOutcome:
    """One check in one mode; ``detail`` says why it was skipped or what broke."""

    check: str
    causal: bool
    outcome: Outcome
    detail: str = ""

    @property
    def mode(self) -> str:
        return "causal" if self.causal else "encoder"


@dataclass
class ContractReport:
    """Every check :func:`check_mixer` considered for one mixer, in the order it ran them."""

    mixer: str
    outcomes: list[CheckOutcome] = field(default_factory=list)

    def count(self, outcome: Outcome) -> int:
        return sum(o.outcome == outcome for o in self.outcomes)

    @property
    def failures(self) -> list[CheckOutcome]:
        return [o for o in self.outcomes if o.outcome == "failed"]

    def __str__(self) -> str:
        counts = ", ".join(f"{self.count(o)} {o}" for o in ("passed", "failed", "skipped"))
        width = max((len(o.check) for o in self.outcomes), default=0)
        lines = [f"contract of {self.mixer}: {counts}"]
        for o in self.outcomes:
            detail = f" ({o.detail})" if o.detail else ""
            lines.append(f"  {o.mode:<7}  {o.check:<{width}}  {o.outcome}{detail}")
        return "\n".join(lines)
