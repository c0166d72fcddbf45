"""How a token mixer moves information between positions: one L x L map per example.

A mixer that weights values by position has an exact map (``TokenMixer.mixing_map``, a
:class:`MixingMap`): the weights it applies, per head or channel group, and how its output
follows from them, which the contract checks by recomputing the output from the map.

Every mixer has a gradient map, whatever its algorithm (the LSTM and plugins included): entry
``[t, s]`` is the Frobenius norm of the Jacobian block ``dy_t / dx_s`` (d_model x d_model) at the
given input, i.e. how strongly output position t responds to input position s. A causal mixer's
map is zero above the diagonal, and no real position's row reads a padded column.

Exactly, that is d_model backward passes per output position (one per output channel: the rows
of the Jacobian). The default estimates it instead with ``probes`` Gaussian projections per
position: for ``v ~ N(0, I)``, ``E ||v^T J||^2 = ||J||_F^2`` (Hutchinson's identity), so the
mean over probes of the squared gradient norms is an unbiased estimate of each squared entry; its
relative spread is at most ``sqrt(2 / probes)`` before the square root halves it.

The backward passes run batched (``is_grads_batched``, PyTorch's vmap over the backward) in
chunks that bound memory, and one at a time for a mixer with an operation vmap cannot batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

# cotangents of one batched backward pass: each holds (batch, length, d_model) floats
CHUNK = 256


@dataclass(frozen=True)
class MixingMap:
    """A mixer's exact map at one input: its output is ``finish(weights @ values)``.

    ``weights`` (B, H, L, L): ``[b, h, t, s]`` is how much output position t takes of value s in
    group h; ``groups`` says what the H groups are ("heads", "channels"). ``values`` (B, H, L, C)
    are what the weights mix, ``finish`` maps the mixed values (B, H, L, C) to the mixer's output
    (B, L, d_model): merging heads, gates, the output projection. Rows of padded positions are
    whatever the mixer computes there (nothing reads them)."""

    weights: Tensor
    values: Tensor
    finish: Callable[[Tensor], Tensor]
    groups: str

    def output(self) -> Tensor:
        """The mixer's output recomputed from the map: what the contract compares with forward."""
        return self.finish(self.weights @ self.values)


def toeplitz(kernel: Tensor, length: int, first_offset: int) -> Tensor:
    """(C, L, L): the matrix of a depthwise convolution, ``[c, t, s] = kernel[c, t - s -
    first_offset]`` where that index is in range, else 0. ``kernel`` (C, taps) lists the taps by
    offset t - s, from ``first_offset`` up: 0 for a causal kernel, 1 - L for a centred one."""
    positions = torch.arange(length, device=kernel.device)
    index = positions[:, None] - positions[None, :] - first_offset  # (t, s)
    taps = kernel.shape[-1]
    inside = (index >= 0) & (index < taps)
    return kernel[:, index.clamp(0, taps - 1)] * inside


def _probe_vectors(
    length: int, d_model: int, probes: int | None, generator: torch.Generator | None
) -> Tensor:
    """(length, P, d_model): the vectors that project each output position's Jacobian rows: the
    d_model unit vectors (exact) or ``probes`` Gaussian ones."""
    if probes is None:
        return torch.eye(d_model).expand(length, d_model, d_model)
    return torch.randn(length, probes, d_model, generator=generator)


def _backward(y: Tensor, x: Tensor, cotangents: Tensor, batched: bool) -> Tensor:
    """The input gradients of ``(cotangents * y).sum()`` for each cotangent: (n, *x.shape)."""
    if batched:
        (grads,) = torch.autograd.grad(y, x, cotangents, retain_graph=True, is_grads_batched=True)
        return grads
    rows = [torch.autograd.grad(y, x, c, retain_graph=True)[0] for c in cotangents]
    return torch.stack(rows)


def gradient_map(
    mixer: nn.Module,
    x: Tensor,
    mask: Tensor | None = None,
    *,
    probes: int | None = 8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(B, L, L): ``[b, t, s]`` = ||d y_t / d x_s||_F of ``mixer`` at ``x`` (B, L, d_model).

    ``probes=None`` computes it exactly (d_model backward passes per position); an int estimates
    it from that many Gaussian projections per position (the module docstring). Rows of padded
    positions are zero (nothing reads them). The mixer runs in its current mode: put it in eval
    mode for a map without dropout.
    """
    if probes is not None and probes < 1:
        raise ValueError(f"probes must be a positive number of projections or None, got {probes}")
    batch, length, d_model = x.shape
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = mixer(x, mask)
    vectors = _probe_vectors(length, d_model, probes, generator).to(x)
    count = vectors.shape[1]
    positions = torch.arange(length, device=x.device).repeat_interleave(count)
    flat = vectors.reshape(length * count, d_model)
    squares = x.new_zeros(batch, length, length)
    batched = True
    for start in range(0, positions.numel(), CHUNK):
        at = positions[start : start + CHUNK]
        cotangents = x.new_zeros(at.numel(), batch, length, d_model)
        cotangents[torch.arange(at.numel()), :, at] = flat[start : start + CHUNK, None, :]
        try:
            grads = _backward(y, x, cotangents, batched)
        except RuntimeError:
            if not batched:
                raise
            batched = False  # an operation vmap cannot batch: one backward pass at a time
            grads = _backward(y, x, cotangents, batched)
        squares.index_add_(1, at, grads.pow(2).sum(-1).transpose(0, 1))
    mean = squares if probes is None else squares / count
    weights = mean.sqrt()
    if mask is not None:
        weights = weights * mask[:, :, None]
    return weights.detach()


@dataclass(frozen=True)
class LayerMap:
    """One layer's map of one example: ``weights`` (H, L, L) and what H counts ("heads",
    "channels", or "gradient": H = 1, the whole mixer's map), and whether it is exact."""

    layer: int
    weights: Tensor
    groups: str
    exact: bool


def layer_maps(
    model: nn.Module,
    tokens: Tensor,
    mask: Tensor | None = None,
    *,
    gradient: bool = False,
    probes: int | None = 8,
    generator: torch.Generator | None = None,
    layers: Sequence[int] | None = None,
) -> list[LayerMap]:
    """Each layer's map of one example ``tokens`` (1, L) in a model with ``blocks`` (a
    :class:`~mixerlab.mixers.SequenceModel`): the mixer's exact map where it has one (unless
    ``gradient``), else its gradient map, at the input the mixer sees in that layer. ``layers``
    picks the layers mapped (default: all). The model runs once in eval mode to record those
    inputs; its mode is restored after."""
    if tokens.dim() != 2 or tokens.shape[0] != 1:
        raise ValueError(
            f"layer_maps reads one example: tokens of shape (1, L), got {tokens.shape}"
        )
    count = len(model.blocks)
    if outside := [layer for layer in layers or () if not 0 <= layer < count]:
        raise ValueError(
            f"layer {outside[0]} is out of range: the model has {count} layers, 0 to {count - 1}"
        )
    chosen = set(range(count) if layers is None else layers)
    inputs: list[tuple[Tensor, Tensor | None]] = []

    def record(_module: nn.Module, args: tuple) -> None:
        inputs.append((args[0].detach(), args[1] if len(args) > 1 else None))

    training = model.training
    hooks = [block.mixer.register_forward_pre_hook(record) for block in model.blocks]
    try:
        model.eval()
        with torch.no_grad():
            model(tokens, mask)
        for hook in hooks:  # the maps below run the mixers again
            hook.remove()
        maps = []
        for layer, (block, (x, layer_mask)) in enumerate(zip(model.blocks, inputs, strict=True)):
            if layer not in chosen:
                continue
            found = None
            if not gradient:
                with torch.no_grad():
                    found = block.mixer.mixing_map(x, layer_mask)
            if found is not None:
                maps.append(LayerMap(layer, found.weights[0].detach(), found.groups, True))
            else:
                weights = gradient_map(
                    block.mixer, x, layer_mask, probes=probes, generator=generator
                )
                maps.append(LayerMap(layer, weights, "gradient", probes is None))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(training)
    return maps
