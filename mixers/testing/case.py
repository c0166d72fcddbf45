"""What every contract check uses: one mixer in one mode (:class:`MixerCase`), the error it
raises, and the registry of checks (``CHECKS``, filled by ``@contract_check`` in checks.py)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mixerlab.mixers._contract import TokenMixer, build_mixer, get_mixer_class


class ContractError(AssertionError):
    """A mixer broke the token-mixer contract; the message names the mixer, mode and problem."""


@dataclass
class MixerCase:
    """One mixer in one mode at one small size: builds instances and random inputs for a check."""

    mixer: str | type[TokenMixer]
    causal: bool = True
    d_model: int = 32
    max_len: int = 24
    hparams: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    atol: float = 1e-5
    # Added to atol, times the reference's largest magnitude: lower precisions round relative to
    # a value's size (bf16 keeps 8 bits, 0.4%), so their tolerance grows with the output's scale.
    rtol: float = 0.0
    # Std of Gaussian noise added to every parameter after init: an init that mixes positions
    # only weakly (gMLP's W near 0) can hide a leak that trained weights would show.
    perturb: float = 0.0
    # Run every forward, prefill and step under autocast to this dtype (e.g. torch.bfloat16,
    # the path ``trainer.precision=bf16-mixed`` takes); outputs may then come back in it.
    autocast: torch.dtype | None = None

    def __post_init__(self) -> None:
        if self.max_len < 8:
            raise ValueError(f"the contract checks need max_len >= 8, got {self.max_len}")
        if isinstance(self.mixer, str):
            self.cls = get_mixer_class(self.mixer)
            self.name = self.mixer
        elif isinstance(self.mixer, type) and issubclass(self.mixer, TokenMixer):
            self.cls = self.mixer
            self.name = self.mixer.__dict__.get("registry_name", self.mixer.__name__)
        else:
            raise TypeError(
                f"check a mixer by registered name or TokenMixer subclass, got {self.mixer!r}"
            )
        self._inputs = torch.Generator().manual_seed(self.seed)

    @property
    def label(self) -> str:
        precision = (
            f", autocast {str(self.autocast).removeprefix('torch.')}" if self.autocast else ""
        )
        return f"{self.name}(causal={self.causal}{precision})"

    @contextlib.contextmanager
    def precision(self) -> Iterator[None]:
        """Autocast to ``autocast`` on the default device's type, or nothing when it is None."""
        if self.autocast is None:
            yield
            return
        with torch.autocast(torch.get_default_device().type, dtype=self.autocast):
            yield

    def fail(self, problem: str) -> ContractError:
        return ContractError(f"{self.label}: {problem}")

    def build(self, *, seed_offset: int = 0, train: bool = False) -> TokenMixer:
        """A fresh instance seeded with ``seed + seed_offset``, in eval mode unless ``train``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + seed_offset)
            kwargs = {"causal": self.causal, "max_len": self.max_len, **self.hparams}
            if isinstance(self.mixer, str):
                mixer = build_mixer(self.mixer, self.d_model, **kwargs)
            else:
                mixer = self.cls(self.d_model, **kwargs)
            if self.perturb:
                with torch.no_grad():
                    for param in mixer.parameters():
                        param.add_(self.perturb * torch.randn_like(param))
        return mixer.train(train)

    def randn(self, *shape: int, scale: float = 1.0) -> Tensor:
        """Drawn on the CPU from the case's generator, so every device sees the same numbers,
        then moved to the default device (``with torch.device("cuda"):`` checks on a GPU)."""
        x = torch.randn(*shape, generator=self._inputs, device="cpu")
        return scale * x.to(torch.get_default_device())

    def mask(self, lengths: list[int], total: int) -> Tensor:
        """Right-padding mask (len(lengths), total): True at the first ``lengths[b]`` positions."""
        return torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]

    def run(
        self, mixer: TokenMixer, x: Tensor, mask: Tensor | None = None, prefix: Tensor | None = None
    ) -> Tensor:
        """Forward ``x`` (with a bidirectional ``prefix`` if given) and fail unless the output is
        a tensor shaped and typed like ``x``."""
        y = mixer(x, mask) if prefix is None else mixer(x, mask, prefix=prefix)
        dtypes = {x.dtype, self.autocast or x.dtype}
        if not isinstance(y, Tensor) or y.shape != x.shape or y.dtype not in dtypes:
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
            wanted = " or ".join(sorted(str(dtype) for dtype in dtypes))
            raise self.fail(
                f"forward must return a {wanted} tensor shaped like its input "
                f"{tuple(x.shape)}, got {got}"
            )
        return y

    def tolerance(self, reference: Tensor) -> float:
        """The largest difference allowed from ``reference``: atol + rtol * max |reference|."""
        if not self.rtol or not reference.numel():
            return self.atol
        return self.atol + self.rtol * float(reference.detach().abs().max())

    def describe_tolerance(self, reference: Tensor) -> str:
        if not self.rtol:
            return f"atol {self.atol:g}"
        return f"atol {self.atol:g} + rtol {self.rtol:g} of {float(reference.abs().max()):.3g}"

    def assert_close(self, actual: Tensor, expected: Tensor, problem: str) -> None:
        """Fail with ``problem`` (formatted with ``{diff}``) when the tensors differ beyond the
        case's tolerance of ``expected``."""
        diff = max_abs_diff(actual, expected)
        if not diff <= self.tolerance(expected):
            tolerance = self.describe_tolerance(expected)
            raise self.fail(problem.format(diff=f"{diff:.3g}") + f" ({tolerance})")


def max_abs_diff(a: Tensor, b: Tensor) -> float:
    """Largest absolute difference; NaN anywhere counts as infinitely different."""
    diff = (a.detach().float() - b.detach().float()).abs()
    return float(torch.nan_to_num(diff, nan=math.inf).max()) if diff.numel() else 0.0


def _always(cls: type[TokenMixer], causal: bool) -> bool:
    return True


@dataclass(frozen=True)
class Check:
    """A named contract check; call it like ``check_mixer`` but for one mode (``causal``).

    ``condition`` says for which mixers and modes it runs (``when`` says it in words); no check
    runs in the encoder mode of a decoder-only mixer (``supports_encoder = False``).
    ``full_precision_only`` marks a check that asks for any change at all, which a weak but real
    dependence can fail under autocast (bf16 rounds it away): it runs only without autocast.
    """

    name: str
    run: Callable[[MixerCase], None]
    condition: Callable[[type[TokenMixer], bool], bool] = _always
    when: str = "always"
    full_precision_only: bool = False

    def skip_reason(
        self, cls: type[TokenMixer], causal: bool, autocast: torch.dtype | None = None
    ) -> str | None:
        """Why this check does not run for ``cls`` in this mode (under ``autocast``), or None
        when it runs."""
        if not causal and not cls.supports_encoder:
            return "decoder-only mixer: supports_encoder = False"
        if not self.condition(cls, causal):
            return f"runs only {self.when}"
        if autocast is not None and self.full_precision_only:
            return "asks for any change, which autocast's rounding can hide: runs in fp32"
        return None

    def applies(
        self, cls: type[TokenMixer], causal: bool, autocast: torch.dtype | None = None
    ) -> bool:
        return self.skip_reason(cls, causal, autocast) is None

    def run_case(self, case: MixerCase) -> None:
        """Run the check on ``case`` under the case's precision."""
        with case.precision():
            self.run(case)

    def __call__(self, mixer: str | type[TokenMixer], *, causal: bool = True, **case: Any) -> None:
        """Run this check on ``mixer`` in one mode; ``case`` takes :class:`MixerCase`'s fields
        (d_model, max_len, hparams, seed, atol, rtol, perturb, autocast)."""
        checked = MixerCase(mixer, causal, **case)
        reason = self.skip_reason(checked.cls, causal, checked.autocast)
        if reason:
            raise ValueError(f"check {self.name!r} does not apply to {checked.label}: {reason}")
        self.run_case(checked)

    @property
    def description(self) -> str:
        return (self.run.__doc__ or "").strip().splitlines()[0]


CHECKS: dict[str, Check] = {}


def contract_check(
    name: str,
    condition: Callable[[type[TokenMixer], bool], bool] = _always,
    when: str = "always",
    full_precision_only: bool = False,
) -> Callable[[Callable[[MixerCase], None]], Check]:
    def register(run: Callable[[MixerCase], None]) -> Check:
        CHECKS[name] = Check(name, run, condition, when, full_precision_only)
        return CHECKS[name]

    return register
