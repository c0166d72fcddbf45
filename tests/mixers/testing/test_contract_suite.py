"""Tests of the contract checks themselves: a correct reference mixer passes every check, and a
mixer broken in one way fails the check for that rule with a message naming the problem.

The mixers here are passed to the checks as classes, so none of them enters the registry that
other tests (the contract suite over ``available_mixers()``) see.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixerlab.mixers import TokenMixer, available_mixers, register_mixer
from mixerlab.mixers.mixing_map import MixingMap
from mixerlab.mixers.testing import (
    BF16_TOLERANCE,
    CHECKS,
    ContractError,
    MixerCase,
    check_mixer,
)


class CumulativeMean(TokenMixer):
    """Reference mixer: the running (causal) or global (encoder) mean of a projection, masked."""

    supports_step = True

    def __init__(self, d_model: int, *, causal: bool = True, max_len: int | None = None) -> None:
        super().__init__(d_model, causal=causal, max_len=max_len)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        self.check_input(x, mask)
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool)
        return self.out(self.mix(self.value(x), mask[..., None].to(x.dtype)))

    def mix(self, v: Tensor, weight: Tensor) -> Tensor:
        v = v * weight
        if self.causal:
            return v.cumsum(1) / weight.cumsum(1).clamp_min(1)
        return (v.sum(1, keepdim=True) / weight.sum(1, keepdim=True).clamp_min(1)).expand_as(v)

    def init_state(self, batch_size: int) -> dict[str, Tensor | int]:
        return {"sum": torch.zeros(batch_size, self.d_model), "count": 0}

    def step(self, x_t: Tensor, state: dict) -> tuple[Tensor, dict]:
        self.check_step(state["count"])
        total, count = state["sum"] + self.value(x_t), state["count"] + 1
        return self.out(total / count), {"sum": total, "count": count}

    def flops_per_token(self, seq_len: int) -> float:
        return 4.0 * self.d_model**2 + 2.0 * self.d_model


class LeaksFuture(CumulativeMean):
    def mix(self, v: Tensor, weight: Tensor) -> Tensor:
        v = v * weight
        return (v.sum(1, keepdim=True) / weight.sum(1, keepdim=True).clamp_min(1)).expand_as(v)


class BlindEncoder(CumulativeMean):
    def mix(self, v: Tensor, weight: Tensor) -> Tensor:
        return (v * weight).cumsum(1) / weight.cumsum(1)


class BlindLocalEncoder(BlindEncoder):
    global_mixing = False  # a local mixer must still see some later position


class IgnoresMask(CumulativeMean):
    def mix(self, v: Tensor, weight: Tensor) -> Tensor:
        return v.mean(1, keepdim=True).expand_as(v)


class NaNAtPadding(CumulativeMean):
    def mix(self, v: Tensor, weight: Tensor) -> Tensor:
        return super().mix(v, weight) * weight / weight


class NaNOnEmptyRow(CumulativeMean):
    """Divides by the count of real tokens: 0 / 0 on a row with none."""

    def mix(self, v: Tensor, weight: Tensor) -> Tensor:
        return (v * weight).sum(1, keepdim=True).expand_as(v) / weight.sum(1, keepdim=True)


class MixesBatchRows(CumulativeMean):
    def mix(self, v: Tensor, weight: Tensor) -> Tensor:
        return super().mix(v - v.mean(0, keepdim=True), weight)


class DropoutInEval(CumulativeMean):
    def mix(self, v: Tensor, weight: Tensor) -> Tensor:
        return super().mix(F.dropout(v, 0.5, training=True), weight)


class UnusedParameter(CumulativeMean):
    def __init__(self, d_model: int, *, causal: bool = True, max_len: int | None = None) -> None:
        super().__init__(d_model, causal=causal, max_len=max_len)
        self.unused = nn.Parameter(torch.ones(d_model))


class ZeroGradientParameter(UnusedParameter):
    def mix(self, v: Tensor, weight: Tensor) -> Tensor:
        return super().mix(v + 0.0 * self.unused, weight)


class NearZeroGate(UnusedParameter):
    """Like gMLP's spatial weight: initialised near zero, yet it must get a gradient."""

    def __init__(self, d_model: int, *, causal: bool = True, max_len: int | None = None) -> None:
        super().__init__(d_model, causal=causal, max_len=max_len)
        nn.init.uniform_(self.unused, -1e-6, 1e-6)

    def mix(self, v: Tensor, weight: Tensor) -> Tensor:
        return super().mix(v * (1.0 + self.unused), weight)


class StepOffByOne(CumulativeMean):
    def step(self, x_t: Tensor, state: dict) -> tuple[Tensor, dict]:
        y_t, state = super().step(x_t, state)
        return y_t * state["count"] / (state["count"] + 1), state


class StepsPastMaxLen(CumulativeMean):
    def step(self, x_t: Tensor, state: dict) -> tuple[Tensor, dict]:
        total, count = state["sum"] + self.value(x_t), state["count"] + 1
        return self.out(total / count), {"sum": total, "count": count}


class NoLengthCheck(CumulativeMean):
    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        weight = torch.ones(*x.shape[:2], 1) if mask is None else mask[..., None].float()
        return self.out(self.mix(self.value(x), weight))


class VagueLengthError(CumulativeMean):
    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if x.shape[1] > self.max_len:
            raise ValueError("input too long")
        return super().forward(x, mask)


class StateOutsideStateDict(CumulativeMean):
    def __init__(self, d_model: int, *, causal: bool = True, max_len: int | None = None) -> None:
        super().__init__(d_model, causal=causal, max_len=max_len)
        self.register_buffer("shift", torch.randn(d_model), persistent=False)

    def mix(self, v: Tensor, weight: Tensor) -> Tensor:
        return super().mix(v + self.shift, weight)


class DropsAChannel(CumulativeMean):
    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return super().forward(x, mask)[..., 1:]


class ZeroFlops(CumulativeMean):
    def flops_per_token(self, seq_len: int) -> float:
        return 0.0


class TensorFlops(CumulativeMean):
    def flops_per_token(self, seq_len: int) -> float:
        return torch.tensor(1.0)


class MisnamedNoDecay(CumulativeMean):
    no_weight_decay = ("value.weight", "valu.bias")


class MisnamedLrCap(CumulativeMean):
    def __init__(self, d_model: int, *, causal: bool = True, max_len: int | None = None) -> None:
        super().__init__(d_model, causal=causal, max_len=max_len)
        self.max_lr = {"vale.*": 1e-3}


class NamesItsInputProjection(CumulativeMean):
    def output_projections(self) -> list[nn.Linear]:
        return [self.value]  # the output Linear's bias still writes the output


class NamesAForeignLinear(CumulativeMean):
    def output_projections(self) -> list[nn.Linear]:
        return [nn.Linear(self.d_model, self.d_model)]


class DecoderOnly(CumulativeMean):
    """Only ever causal, and says so: the encoder mode is skipped, not failed."""

    supports_encoder = False

    def mix(self, v: Tensor, weight: Tensor) -> Tensor:
        return (v * weight).cumsum(1) / weight.cumsum(1).clamp_min(1)


class VectorAuxLoss(CumulativeMean):
    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        y = super().forward(x, mask)
        self.aux_loss = y.mean(dim=(0, 1))
        return y


class NaNAuxLoss(CumulativeMean):
    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        y = super().forward(x, mask)
        self.aux_loss = torch.tensor(float("nan"))
        return y


class MappedMean(CumulativeMean):
    """The reference mixer with its exact map: equal weights over the real positions read."""

    def mixing_map(self, x: Tensor, mask: Tensor | None = None) -> MixingMap:
        batch, length, _ = x.shape
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.bool)
        weights = mask[:, None, None, :].to(x.dtype).expand(batch, 1, length, length)
        weights = weights.tril() if self.causal else weights
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(1)
        return MixingMap(weights, self.value(x)[:, None], lambda m: self.out(m[:, 0]), "channels")


class MisreadMap(MappedMean):
    def mixing_map(self, x: Tensor, mask: Tensor | None = None) -> MixingMap:
        found = super().mixing_map(x, mask)
        return MixingMap(found.weights.transpose(-1, -2), found.values, found.finish, "channels")


class PrefixMean(CumulativeMean):
    """The reference mixer with a bidirectional prefix: position t averages the real positions
    up to max(t, prefix - 1)."""

    supports_prefix = True

    def forward(
        self, x: Tensor, mask: Tensor | None = None, prefix: Tensor | None = None
    ) -> Tensor:
        self.check_input(x, mask)
        self.check_prefix(x, prefix)
        if prefix is None:
            return super().forward(x, mask)
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool)
        weight = mask[..., None].to(x.dtype)
        sums, counts = (self.value(x) * weight).cumsum(1), weight.cumsum(1)
        read_to = torch.maximum(torch.arange(x.shape[1]), self.last_read(prefix)[:, None])
        sums = sums.gather(1, read_to[..., None].expand_as(sums))
        return self.out(sums / counts.gather(1, read_to[..., None]).clamp_min(1))

    def last_read(self, prefix: Tensor) -> Tensor:
        return (prefix - 1).clamp_min(0)

    def prefill(self, x: Tensor, prefix: Tensor | None = None) -> tuple[Tensor, dict]:
        self.check_prefill(x)
        total = self.value(x).sum(1)
        return self(x, prefix=prefix), {"sum": total, "count": x.shape[1]}


class IgnoresPrefix(PrefixMean):
    def last_read(self, prefix: Tensor) -> Tensor:
        return torch.zeros_like(prefix)


class ReadsPastPrefix(PrefixMean):
    def last_read(self, prefix: Tensor) -> Tensor:
        return prefix


class ScalarAuxLoss(CumulativeMean):
    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        y = super().forward(x, mask)
        self.aux_loss = 0.01 * self.value.weight.square().mean()
        return y


def test_checks_are_listed_in_order() -> None:
    assert list(CHECKS) == [
        "shapes",
        "finite",
        "causality",
        "sees_future",
        "padding",
        "batch_independence",
        "gradients",
        "determinism",
        "state_dict",
        "max_len",
        "flops",
        "aux_loss",
        "no_weight_decay",
        "output_projections",
        "gradient_map",
        "exact_map",
        "step",
        "prefill",
        "prefix",
        "state_size",
        "encoder_step",
    ]
    assert all(check.description for check in CHECKS.values())


@pytest.mark.parametrize("causal", [True, False])
def test_reference_mixer_passes_every_check(causal: bool) -> None:
    check_mixer(CumulativeMean, causal=causal)
    check_mixer(MappedMean, causal=causal)  # and with an exact map to check
    check_mixer(PrefixMean, causal=causal)  # and with a bidirectional prefix to check


def test_check_mixer_reports_what_it_ran_and_skipped(capsys: pytest.CaptureFixture) -> None:
    report = check_mixer(CumulativeMean, d_model=8, max_len=8, seed=3, verbose=True)
    ran = {(o.mode, o.check): o.outcome for o in report.outcomes}
    assert len(ran) == 2 * len(CHECKS)  # both modes by default
    assert ran["causal", "step"] == ran["encoder", "sees_future"] == "passed"
    assert ran["encoder", "step"] == ran["causal", "sees_future"] == "skipped"
    assert (report.count("passed"), report.count("failed"), report.count("skipped")) == (34, 0, 8)
    text = str(report)
    assert text.startswith("contract of CumulativeMean: 34 passed, 0 failed, 8 skipped\n")
    assert re.search(r"^  causal +step +passed$", text, re.MULTILINE)
    assert re.search(
        r"^  encoder +step +skipped \(runs only for causal=True mixers with supports_step\)$",
        text,
        re.MULTILINE,
    )
    assert capsys.readouterr().out == text + "\n"


def test_decoder_only_mixer_refuses_the_encoder_mode_and_the_checks_skip_it() -> None:
    with pytest.raises(ValueError, match=r"^DecoderOnly is decoder-only .* causal=False"):
        DecoderOnly(8, causal=False)
    report = check_mixer(DecoderOnly)  # its encoder mode would fail sees_future
    encoder = [o for o in report.outcomes if o.mode == "encoder"]
    assert len(encoder) == len(CHECKS)
    assert {(o.outcome, o.detail) for o in encoder} == {
        ("skipped", "decoder-only mixer: supports_encoder = False")
    }
    assert report.count("passed") == 18
    with pytest.raises(ValueError, match=r"'shapes' does not apply to DecoderOnly\(causal=False\)"):
        CHECKS["shapes"](DecoderOnly, causal=False)


BROKEN = [
    (DropsAChannel, True, "shapes", r"forward must return a torch.float32 tensor shaped like"),
    (NaNAtPadding, True, "finite", r"non-finite output in eval mode at row 1, padded position"),
    (NaNOnEmptyRow, False, "finite", r"non-finite output in eval mode at row 3, padded position 0"),
    (LeaksFuture, True, "causality", r"position 0 changed .* when position 1 .* leaks the future"),
    (BlindEncoder, False, "sees_future", r"did not change when the last real position 23 changed"),
    (BlindLocalEncoder, False, "sees_future", r"did not change when positions 1.. changed"),
    (IgnoresMask, False, "padding", r"row 1 \(17 real of 20 positions\) .* padding leaks"),
    (MixesBatchRows, True, "batch_independence", r"row 0 changed .* mixes batch rows"),
    (UnusedParameter, True, "gradients", r"parameter 'unused' received no gradient"),
    (ZeroGradientParameter, True, "gradients", r"'unused' received an all-zero gradient"),
    (DropoutInEval, True, "determinism", r"two eval-mode forwards of the same input differ"),
    (StateOutsideStateDict, False, "state_dict", r"some state lives outside the state_dict"),
    (StepOffByOne, True, "step", r"step output at position 0 differs from forward"),
    (StepsPastMaxLen, True, "step", r"stepping to position 25 with max_len=24 did not raise"),
    (StepsPastMaxLen, False, "encoder_step", r"step did not raise ValueError in encoder mode"),
    (NoLengthCheck, False, "max_len", r"length 25 > max_len 24 did not raise ValueError"),
    (VagueLengthError, True, "max_len", r"must name both lengths, got: input too long"),
    (ZeroFlops, True, "flops", r"flops_per_token\(1\) must be positive and finite, got 0.0"),
    (TensorFlops, True, "flops", r"flops_per_token\(1\) must return a float, got Tensor"),
    (VectorAuxLoss, True, "aux_loss", r"must be a float scalar, got torch.float32 \(32,\)"),
    (NaNAuxLoss, False, "aux_loss", r"aux_loss after a train forward is not finite"),
    (
        MisnamedNoDecay,
        True,
        "no_weight_decay",
        r"no_weight_decay pattern 'valu.bias' of MisnamedNoDecay matches no parameter; its "
        r"parameters are: value.weight, value.bias, out.weight, out.bias",
    ),
    (MisnamedLrCap, True, "no_weight_decay", r"max_lr pattern 'vale.\*' of MisnamedLrCap"),
    (NamesItsInputProjection, True, "output_projections", r"another path writes the output"),
    (NamesAForeignLinear, False, "output_projections", r"must return Linear submodules"),
    (LeaksFuture, True, "gradient_map", r"output position 0 of row 1 reads input position 1 "),
    (IgnoresMask, False, "gradient_map", r"a real position of row 1 reads a padded column"),
    (MisreadMap, True, "exact_map", r"does not recompute the output"),
    (MisreadMap, False, "exact_map", r"does not recompute the output"),
    (IgnoresPrefix, True, "prefix", r"row 0 \(prefix 6\): .* the prefix is not read both ways"),
    (ReadsPastPrefix, True, "prefix", r"row 1 \(prefix 1\): .* past the prefix leaks backwards"),
]


@pytest.mark.parametrize(
    ("mixer", "causal", "check", "message"),
    BROKEN,
    ids=[f"{mixer.__name__}-{check}" for mixer, _, check, _ in BROKEN],
)
def test_broken_mixer_fails_its_check(
    mixer: type[TokenMixer], causal: bool, check: str, message: str
) -> None:
    label = rf"^{mixer.__name__}\(causal={causal}\): "
    with pytest.raises(ContractError, match=label):
        CHECKS[check](mixer, causal=causal)
    with pytest.raises(AssertionError, match=message):
        CHECKS[check](mixer, causal=causal)


def test_near_zero_initialised_parameter_still_passes_gradients() -> None:
    CHECKS["gradients"](NearZeroGate, causal=True)


def test_finite_scalar_aux_loss_passes() -> None:
    CHECKS["aux_loss"](ScalarAuxLoss, causal=True)
    CHECKS["gradients"](ScalarAuxLoss, causal=True)


def test_check_mixer_reports_every_failure_at_once(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ContractError) as info:
        check_mixer(LeaksFuture, verbose=True)
    assert "contract of LeaksFuture: 30 passed, 4 failed, 8 skipped" in capsys.readouterr().out
    message = str(info.value)
    assert message.startswith("4 contract check(s) failed:")
    assert "[causality] LeaksFuture(causal=True): " in message
    assert "[gradient_map] LeaksFuture(causal=True): " in message
    assert "[step] LeaksFuture(causal=True): step output at position 0" in message


class HalfUnderAutocast(CumulativeMean):
    """Returns float16 under autocast: neither its input's dtype nor the autocast dtype."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        y = super().forward(x, mask)
        return y.half() if torch.is_autocast_enabled(x.device.type) else y


@pytest.mark.parametrize("causal", [True, False])
def test_reference_mixers_pass_the_contract_under_bf16_autocast(causal: bool) -> None:
    for mixer in (CumulativeMean, MappedMean, PrefixMean):
        report = check_mixer(mixer, causal=causal, autocast=torch.bfloat16, **BF16_TOLERANCE)
        skipped = {o.check: o.detail for o in report.outcomes if o.outcome == "skipped"}
        assert causal or "autocast's rounding" in skipped["sees_future"]


def test_bf16_autocast_runs_every_call_and_admits_only_its_dtype() -> None:
    seen: list[torch.dtype] = []

    class RecordsDtype(CumulativeMean):
        def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
            y = super().forward(x, mask)
            seen.append(y.dtype)
            return y

    CHECKS["padding"](RecordsDtype, autocast=torch.bfloat16, **BF16_TOLERANCE)
    assert seen and set(seen) == {torch.bfloat16}  # the Linear ran in bf16: autocast was on
    assert MixerCase(CumulativeMean, autocast=torch.bfloat16).label == (
        "CumulativeMean(causal=True, autocast bfloat16)"
    )
    CHECKS["shapes"](HalfUnderAutocast)  # fine without autocast
    with pytest.raises(
        ContractError, match=r"torch.bfloat16 or torch.float32 tensor .* got torch.float16"
    ):
        CHECKS["shapes"](HalfUnderAutocast, autocast=torch.bfloat16)


def test_the_relative_tolerance_scales_with_the_reference() -> None:
    reference = torch.tensor([10.0, -2.0])
    off_by_a_twentieth = reference + torch.tensor([0.05, 0.0])
    MixerCase(CumulativeMean, atol=1e-3, rtol=1e-2).assert_close(
        off_by_a_twentieth, reference, "{diff}"
    )
    with pytest.raises(ContractError, match=r"0.05 \(atol 0.001 \+ rtol 0.001 of 10\)"):
        MixerCase(CumulativeMean, atol=1e-3, rtol=1e-3).assert_close(
            off_by_a_twentieth, reference, "{diff}"
        )
    with pytest.raises(ContractError, match=r"0.05 \(atol 1e-05\)$"):
        MixerCase(CumulativeMean).assert_close(off_by_a_twentieth, reference, "{diff}")


def test_check_refuses_a_mode_it_does_not_apply_to() -> None:
    with pytest.raises(ValueError, match=r"'step' does not apply to CumulativeMean\(causal=Fal"):
        CHECKS["step"](CumulativeMean, causal=False)
    with pytest.raises(ValueError, match=r"'sees_future' does not apply .* for causal=False"):
        CHECKS["sees_future"](CumulativeMean, causal=True)


def test_checks_leave_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    CHECKS["state_dict"](CumulativeMean)
    assert torch.equal(torch.rand(3), expected)


def test_case_rejects_what_is_not_a_mixer() -> None:
    with pytest.raises(TypeError, match="TokenMixer subclass"):
        MixerCase(nn.Linear)
    with pytest.raises(ValueError, match="max_len >= 8"):
        MixerCase(CumulativeMean, max_len=2)


@pytest.mark.usefixtures("scratch_registries")
def test_check_mixer_by_registered_name() -> None:
    register_mixer("_test_cumulative_mean")(type("Registered", (CumulativeMean,), {}))
    check_mixer("_test_cumulative_mean", causal=True, d_model=8, max_len=8)
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        check_mixer("_test_cumulative_mean", hparams={"width": 3})


def test_test_mixers_stay_out_of_the_registry() -> None:
    assert not any(name.startswith("_test") for name in available_mixers())
