"""Sampling from a causal language model: prefill the prompt once, then one ``step`` per new
token where every mixer steps, or ``forward`` over the sequence so far where one does not."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    memories: Sequence[Any] | None = None,
) -> Tensor:
    """Sample ``max_new_tokens`` after ``prompt`` (B, T) from ``model``, a ``SequenceModel``:
    prompt and continuation (B, T+n).

    When every mixer steps, the prompt is prefilled in one parallel pass and each new token
    is one ``step`` (KV cache, RNN state, conv window, ...); otherwise ``forward`` re-runs on
    the sequence so far. ``temperature=0`` is greedy. A model that reads an encoder reads
    its ``memories`` (``SequenceModel.memories``) throughout; a prefix LM reads the prompt as its
    bidirectional prefix and what it writes causally.
    """
    if not model.causal or model.num_classes is not None or model.last_state_decoder is not None:
        raise ValueError(
            "generate needs a causal language model (causal=True, no num_classes, "
            "readout='per_position')"
        )
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(
            f"generate needs a prompt of shape (batch, length >= 1), got "
            f"{tuple(prompt.shape)}; start from at least one token (e.g. a BOS token)"
        )
    total = prompt.shape[1] + max_new_tokens
    if model.max_len is not None and total - 1 > model.max_len:  # the last token is not read
        raise ValueError(
            f"prompt ({prompt.shape[1]}) + max_new_tokens ({max_new_tokens}) needs the model "
            f"to read {total - 1} positions (the last token is only written), more than its "
            f"max_len {model.max_len}"
        )
    tokens = prompt
    prefix = model.prompt_prefix(prompt)  # the prompt, however long the sequence grows
    if model.supports_step:
        logits, state = model.prefill(prompt, memories)
        logits = logits[:, -1]
    else:
        logits = model(prompt, memories=memories, prefix=prefix)[:, -1]
    for _ in range(max_new_tokens):
        next_token = _sample(logits, temperature, top_k, generator)
        tokens = torch.cat((tokens, next_token[:, None]), dim=1)
        if tokens.shape[1] == total:
            break
        if model.supports_step:
            logits, state = model.step(next_token, state)
        else:
            logits = model(tokens, memories=memories, prefix=prefix)[:, -1]
    return tokens


def _sample(
    logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> Tensor:
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
