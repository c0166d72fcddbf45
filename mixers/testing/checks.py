"""The token-mixer contract, one check each: shapes, finiteness, causality, padding, batch
independence, gradients, determinism, state_dict, max_len, FLOPs, aux_loss, the
``no_weight_decay`` and ``max_lr`` declarations, the output projections, the gradient mixing map
and a mixer's exact map (the decoding checks follow in :mod:`mixerlab.mixers.testing.decoding`).
Each check builds small fp32 instances through its :class:`MixerCase` and raises
``ContractError`` naming what broke; ``@contract_check`` registers it in ``CHECKS`` in the order
of this file."""

from __future__ import annotations

import io
import math

import torch
from torch import Tensor

from mixerlab.mixers.mixing_map import gradient_map
from mixerlab.mixers.testing.case import MixerCase, contract_check, max_abs_diff


@contract_check("shapes")
def check_shapes(case: MixerCase) -> None:
    """Output is shaped (B, L, d_model) for length 1, a middle length and max_len."""
    mixer = case.build()
    with torch.no_grad():
        for length in (1, case.max_len // 2, case.max_len):
            x = case.randn(2, length, case.d_model)
            case.run(mixer, x)
            case.run(mixer, x, case.mask([length, max(1, length - 1)], length))


@contract_check("finite")
def check_finite(case: MixerCase) -> None:
    """Outputs are finite everywhere, padded positions and an all-padding row included, in train
    and eval mode."""
    length = case.max_len
    x = case.randn(4, length, case.d_model)
    mask = case.mask([length, 1, length // 2, 0], length)
    for train in (False, True):
        mode = "train" if train else "eval"
        with torch.no_grad():
            y = case.run(case.build(train=train), x, mask)
        bad = (~torch.isfinite(y)).any(dim=-1).nonzero().tolist()
        if bad:
            row, pos = bad[0]
            where = "real" if mask[row, pos] else "padded"
            raise case.fail(
                f"non-finite output in {mode} mode at row {row}, {where} position {pos} "
                f"({len(bad)} position(s) in all)"
            )


@contract_check("causality", condition=lambda cls, causal: causal, when="for causal=True")
def check_causality(case: MixerCase) -> None:
    """causal=True: changing position j leaves every output before j unchanged."""
    mixer = case.build()
    length = case.max_len // 2
    x = case.randn(2, length, case.d_model)
    with torch.no_grad():
        y = case.run(mixer, x)
        for j in range(1, length):
            changed = x.clone()
            changed[:, j] = case.randn(2, case.d_model, scale=3.0)
            y2 = case.run(mixer, changed)
            diff = (y2[:, :j] - y[:, :j]).abs().amax(dim=(0, 2))
            leaks = (diff > case.tolerance(y)).nonzero()
            if leaks.numel():
                pos = int(leaks[0])
                raise case.fail(
                    f"output at position {pos} changed by {float(diff[pos]):.3g} when position "
                    f"{j} changed: the mixer leaks the future"
                )


@contract_check(
    "sees_future",
    condition=lambda cls, causal: not causal,
    when="for causal=False",
    full_precision_only=True,
)
def check_sees_future(case: MixerCase) -> None:
    """causal=False: the first position's output changes with later real positions: with the last
    one for a global mixer, with the ones after it for a local mixer (``global_mixing = False``;
    a dilated window may skip the next position)."""
    mixer = case.build()
    length = case.max_len
    lengths = [length, length - 3]
    x = case.randn(2, length, case.d_model)
    mask = case.mask(lengths, length)
    changed = x.clone()
    for row, n in enumerate(lengths):
        later = slice(n - 1, n) if mixer.global_mixing else slice(1, n)
        changed[row, later] = case.randn(later.stop - later.start, case.d_model, scale=3.0)
    with torch.no_grad():
        first = case.run(mixer, x, mask)[:, 0]
        first_changed = case.run(mixer, changed, mask)[:, 0]
    for row, n in enumerate(lengths):
        if max_abs_diff(first[row], first_changed[row]) == 0.0:
            which = f"the last real position {n - 1}" if mixer.global_mixing else "positions 1.."
            raise case.fail(
                f"output at position 0 of row {row} ({n} real tokens) did not change when "
                f"{which} changed: an encoder (causal=False) must see "
                + ("every real position" if mixer.global_mixing else "later positions")
            )


@contract_check("padding")
def check_padding(case: MixerCase) -> None:
    """Real positions of a right-padded batch equal each sequence run alone, whatever the pad."""
    mixer = case.build()
    padded_len = case.max_len - 4
    lengths = [padded_len, padded_len - 3, 1, padded_len // 2]
    x = case.randn(len(lengths), padded_len, case.d_model)
    mask = case.mask(lengths, padded_len)
    other_content = torch.where(mask[..., None], x, case.randn(*x.shape, scale=10.0))
    longer = torch.cat([x, case.randn(len(lengths), 4, case.d_model)], dim=1)
    variants = {
        "with random padding": (x, mask),
        "with the padding content changed": (other_content, mask),
        "with 4 more padding positions": (longer, case.mask(lengths, case.max_len)),
    }
    with torch.no_grad():
        full = case.randn(2, padded_len, case.d_model)
        case.assert_close(
            case.run(mixer, full, torch.ones(2, padded_len, dtype=torch.bool)),
            case.run(mixer, full),
            "an all-True mask gives outputs that differ from mask=None by {diff}",
        )
        alone = [case.run(mixer, x[row : row + 1, :n])[0] for row, n in enumerate(lengths)]
        for variant, (inputs, variant_mask) in variants.items():
            y = case.run(mixer, inputs, variant_mask)
            for row, n in enumerate(lengths):
                case.assert_close(
                    y[row, :n],
                    alone[row],
                    f"{variant}, row {row} ({n} real of {inputs.shape[1]} positions) differs "
                    "on its real positions from the same sequence run alone by {diff}: "
                    "padding leaks into real positions",
                )


@contract_check("batch_independence")
def check_batch_independence(case: MixerCase) -> None:
    """In eval mode a row's output does not depend on the other rows of the batch."""
    mixer = case.build()
    length = case.max_len // 2
    x = case.randn(3, length, case.d_model)
    others = x.clone()
    others[1:] = case.randn(2, length, case.d_model, scale=3.0)
    mask = case.mask([length, length - 2, length], length)
    with torch.no_grad():
        for m in (None, mask):
            case.assert_close(
                case.run(mixer, others, m)[0],
                case.run(mixer, x, m)[0],
                "in eval mode the output of row 0 changed by {diff} when the other rows of the "
                f"batch changed (mask={'None' if m is None else 'padded'}): the mixer mixes "
                "batch rows",
            )


@contract_check("gradients")
def check_gradients(case: MixerCase) -> None:
    """In train mode every trainable parameter gets a finite gradient, nonzero somewhere."""
    mixer = case.build(train=True)
    length = case.max_len
    x = case.randn(2, length, case.d_model).requires_grad_()
    mask = case.mask([length, length // 2], length)
    y = case.run(mixer, x, mask)
    # A random projection, not a plain sum: the sum of a normalised output can be constant.
    loss = (y * case.randn(*y.shape) * mask[..., None]).sum()
    if mixer.aux_loss is not None:
        loss = loss + mixer.aux_loss
    loss.backward()
    for name, param in mixer.named_parameters():
        if not param.requires_grad:
            continue
        if param.grad is None:
            raise case.fail(
                f"parameter {name!r} received no gradient: it is unused in forward "
                "or cut off from the output (detached)"
            )
        if not torch.isfinite(param.grad).all():
            raise case.fail(f"parameter {name!r} received a non-finite gradient")
        if not param.grad.any():
            raise case.fail(
                f"parameter {name!r} received an all-zero gradient: it does not influence "
                "the output"
            )
    if x.grad is None or not x.grad[mask].any():
        raise case.fail("the input received no gradient through the mixer")


@contract_check("determinism")
def check_determinism(case: MixerCase) -> None:
    """Two eval-mode forwards of the same input give the same output."""
    mixer = case.build()
    x = case.randn(2, case.max_len // 2, case.d_model)
    mask = case.mask([case.max_len // 2, 3], case.max_len // 2)
    with torch.no_grad():
        case.assert_close(
            case.run(mixer, x, mask),
            case.run(mixer, x, mask),
            "two eval-mode forwards of the same input differ by {diff}: the mixer is random "
            "(dropout?) or keeps state between calls in eval mode",
        )


@contract_check("state_dict")
def check_state_dict(case: MixerCase) -> None:
    """A fresh instance (another seed) loaded with the state_dict gives identical outputs."""
    source = case.build()
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = case.build(seed_offset=1)
    fresh.load_state_dict(state)
    x = case.randn(2, case.max_len // 2, case.d_model)
    mask = case.mask([case.max_len // 2, 3], case.max_len // 2)
    with torch.no_grad():
        case.assert_close(
            case.run(fresh, x, mask),
            case.run(source, x, mask),
            "an instance built with another seed and loaded with the state_dict differs by "
            "{diff}: some state lives outside the state_dict (a plain tensor attribute or a "
            "non-persistent buffer set at random)",
        )


@contract_check("max_len")
def check_max_len(case: MixerCase) -> None:
    """Input longer than max_len raises a ValueError that names both lengths."""
    mixer = case.build()
    if mixer.max_len != case.max_len:
        raise case.fail(
            f"built with max_len={case.max_len} but its max_len is {mixer.max_len!r}; "
            "pass max_len on to super().__init__"
        )
    too_long = case.max_len + 1
    try:
        with torch.no_grad():
            mixer(case.randn(1, too_long, case.d_model))
    except ValueError as exc:
        message = str(exc)
        if str(too_long) not in message or str(case.max_len) not in message:
            raise case.fail(
                f"the ValueError for length {too_long} > max_len {case.max_len} must name both "
                f"lengths, got: {message}"
            ) from exc
        return
    raise case.fail(
        f"input of length {too_long} > max_len {case.max_len} did not raise ValueError; call "
        "self.check_input(x, mask) first in forward"
    )


@contract_check("flops")
def check_flops(case: MixerCase) -> None:
    """flops_per_token(L) is a positive finite number for length 1, a middle length and max_len."""
    mixer = case.build()
    for length in (1, case.max_len // 2, case.max_len):
        flops = mixer.flops_per_token(length)
        if isinstance(flops, bool) or not isinstance(flops, (int, float)):
            raise case.fail(
                f"flops_per_token({length}) must return a float, got {type(flops).__name__}"
            )
        if not (math.isfinite(flops) and flops > 0):
            raise case.fail(f"flops_per_token({length}) must be positive and finite, got {flops}")


@contract_check("aux_loss")
def check_aux_loss(case: MixerCase) -> None:
    """aux_loss is None or a finite scalar tensor after forward, in train and eval mode."""
    length = case.max_len // 2
    x = case.randn(2, length, case.d_model)
    mask = case.mask([length, 2], length)
    for train in (True, False):
        mixer = case.build(train=train)
        case.run(mixer, x, mask)
        aux = mixer.aux_loss
        if aux is None:
            continue
        mode = "train" if train else "eval"
        if not isinstance(aux, Tensor) or aux.dim() != 0 or not aux.is_floating_point():
            got = f"{aux.dtype} {tuple(aux.shape)}" if isinstance(aux, Tensor) else repr(aux)
            raise case.fail(f"aux_loss after a {mode} forward must be a float scalar, got {got}")
        if not torch.isfinite(aux):
            raise case.fail(f"aux_loss after a {mode} forward is not finite: {float(aux)}")


@contract_check("no_weight_decay")
def check_no_weight_decay(case: MixerCase) -> None:
    """Every ``no_weight_decay`` and ``max_lr`` pattern names at least one parameter of the
    mixer, and every learning-rate cap is positive."""
    mixer = case.build()
    try:
        mixer.no_weight_decay_parameters()
        mixer.max_lr_parameters()
    except ValueError as exc:
        raise case.fail(str(exc)) from exc


@contract_check("output_projections")
def check_output_projections(case: MixerCase) -> None:
    """``output_projections`` names Linear submodules of the mixer that write its output: with
    their weights and biases zeroed, the output is zero (so the model's depth-scaled init of
    them scales the whole residual branch, and nothing bypasses them)."""
    mixer = case.build()
    projections = mixer.output_projections()
    owned = {id(module) for module in mixer.modules()}
    for linear in projections:
        if not isinstance(linear, torch.nn.Linear) or id(linear) not in owned:
            raise case.fail(
                f"output_projections() must return Linear submodules of the mixer, got "
                f"{type(linear).__name__}"
            )
    if not projections:
        return
    with torch.no_grad():
        for linear in projections:
            linear.weight.zero_()
            if linear.bias is not None:
                linear.bias.zero_()
        y = case.run(mixer, case.randn(2, case.max_len, case.d_model))
    if y.abs().max() > case.atol:
        raise case.fail(
            "with every output_projections() Linear zeroed the output is still "
            f"{float(y.abs().max()):.3g} somewhere: another path writes the output"
        )


@contract_check("gradient_map")
def check_gradient_map(case: MixerCase) -> None:
    """The gradient map (``mixers.mixing_map.gradient_map``), exact, has no entry above the
    diagonal of a causal mixer and no real row reading a padded column; its estimate from 64
    projections per position is within 0.25 (relative, whole map) of the exact map."""
    mixer = case.build()
    length = case.max_len // 2
    x = case.randn(2, length, case.d_model)
    mask = case.mask([length, length - 3], length)
    exact = gradient_map(mixer, x, mask, probes=None)
    scale = float(exact.max())
    if not math.isfinite(scale) or scale <= 0:
        raise case.fail(f"the exact gradient map's largest entry is {scale}: nothing mixes")
    tolerance = (case.atol + case.rtol) * scale
    if case.causal:
        upper = exact.triu(1)
        if upper.max() > tolerance:
            b, t, s = (int(i) for i in (upper == upper.max()).nonzero()[0])
            raise case.fail(
                f"gradient map: output position {t} of row {b} reads input position {s} "
                f"({float(upper.max()):.3g} of the map's largest {scale:.3g}): a causal mixer's "
                "map is zero above the diagonal"
            )
    padded = exact[1, : length - 3, length - 3 :]
    if padded.max() > tolerance:
        raise case.fail(
            f"gradient map: a real position of row 1 reads a padded column "
            f"({float(padded.max()):.3g} of the map's largest {scale:.3g})"
        )
    probes = torch.Generator().manual_seed(case.seed)
    estimate = gradient_map(mixer, x, mask, probes=64, generator=probes)
    error = float((estimate - exact).norm() / exact.norm())
    if error > 0.25:
        raise case.fail(
            f"gradient map: the 64-probe estimate is {error:.2f} (relative) from the exact map"
        )


@contract_check("exact_map")
def check_exact_map(case: MixerCase) -> None:
    """A mixer's exact map (``mixing_map``, where it has one) recomputes its output
    (``finish(weights @ values)`` equals forward at the real positions), and, like the gradient
    map, is zero above a causal diagonal and where a real row meets a padded column."""
    mixer = case.build()
    length = case.max_len // 2
    x = case.randn(2, length, case.d_model)
    mask = case.mask([length, length - 3], length)
    with torch.no_grad():
        found = mixer.mixing_map(x, mask)
        if found is None:
            return
        y = case.run(mixer, x, mask)
        recomputed = found.output()
    weights = found.weights
    if weights.dim() != 4 or weights.shape[0] != 2 or weights.shape[2:] != (length, length):
        raise case.fail(
            f"mixing_map weights must be (batch, groups, length, length) = (2, H, {length}, "
            f"{length}), got {tuple(weights.shape)}"
        )
    real = mask[:, :, None]
    gap = float(((recomputed - y).abs() * real).max())
    if gap > 10 * case.atol * max(1.0, float(y.abs().max())):
        raise case.fail(
            f"mixing_map does not recompute the output: finish(weights @ values) differs from "
            f"forward by {gap:.3g} at a real position"
        )
    if case.causal and (weights.triu(1) * real[:, None]).abs().max() > case.atol:
        raise case.fail("mixing_map: a causal mixer's weights are not zero above the diagonal")
    if weights[1, :, : length - 3, length - 3 :].abs().max() > case.atol:
        raise case.fail("mixing_map: a real position of row 1 weights a padded column")
