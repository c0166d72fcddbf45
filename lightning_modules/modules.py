"""LightningModules around a :class:`~mixerlab.mixers.SequenceModel` (language modelling and
classification) or an :class:`~mixerlab.mixers.EncoderDecoderModel` (seq2seq).

Both take the optimiser and LR scheduler as factories (what ``hydra.utils.instantiate`` makes
of a ``_partial_: true`` node, see ``conf/optim/``): the optimiser is called with
:func:`parameter_groups` (no weight decay on norms, biases, embeddings and what a mixer exempts),
the scheduler with the optimiser, stepped every optimiser step (:class:`WarmupCosine` is the run's
schedule). Validation metrics are accumulated with torchmetrics over whole validation sets, one
set per validation dataloader.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mixerlab.lightning_modules.tasks import IGNORE_INDEX
from mixerlab.mixers import TokenMixer


class WarmupCosine:
    """LR multiplier for ``LambdaLR``: linear warmup to 1 over ``warmup_steps``, then cosine to
    ``min_ratio`` at ``total_steps``.

    ``total_steps=None`` keeps the multiplier at 1 after warmup (no known end to decay towards).
    A callable object rather than a closure so that LambdaLR keeps its settings in checkpoints.
    """

    def __init__(self, warmup_steps: int, total_steps: int | None, min_ratio: float) -> None:
        if warmup_steps < 0 or not 0.0 <= min_ratio <= 1.0:
            raise ValueError(
                f"need warmup_steps >= 0 and 0 <= min_ratio <= 1, got warmup_steps="
                f"{warmup_steps}, min_ratio={min_ratio}"
            )
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.total_steps is None:
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def parameter_groups(model: nn.Module, lr: float | None = None) -> list[dict[str, Any]]:
    """Optimiser groups: matrices take the optimiser's weight decay; norms, biases, embedding
    tables and what a token mixer lists in ``no_weight_decay`` get none. Parameters a mixer caps
    (``max_lr``, e.g. S4D's A and dt) below the optimiser's ``lr`` form groups of their own at
    the cap; the schedule scales every group alike.

    Decaying embeddings shrinks rare tokens towards zero and decaying norm gains fights the
    normalisation, so both are left alone (GPT-2/nanoGPT recipe); a mixer's own exceptions (an
    SSM's ``A_log``, whose decay would pull every timescale to the same value) are its to name.
    The first two groups are always the decayed and the exempt ones, so a model without caps
    keeps the optimiser layout its checkpoints were saved with.
    """
    exempt = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    caps: dict[int, float] = {}
    for module in model.modules():
        if isinstance(module, TokenMixer):
            exempt.update(id(p) for p in module.no_weight_decay_parameters())
            caps.update((id(p), cap) for p, cap in module.max_lr_parameters())
    if caps and lr is None:
        raise ValueError(
            "a token mixer caps the learning rate of some parameters (max_lr), but the "
            "optimiser's lr is unknown: give the optimizer partial an lr keyword"
        )
    decay, no_decay = [], []
    capped: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        decays = p.ndim >= 2 and id(p) not in exempt
        if id(p) in caps and lr is not None and caps[id(p)] < lr:
            capped.setdefault((decays, caps[id(p)]), []).append(p)
        else:
            (decay if decays else no_decay).append(p)
    groups: list[dict[str, Any]] = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    for (decays, cap), params in capped.items():
        groups.append({"params": params, "lr": cap, **({} if decays else {"weight_decay": 0.0})})
    return groups


class _ValSet(nn.Module):
    """Loss and accuracy accumulated over one validation set (or all of them), and with
    ``sequences`` the share of sequences whose every scored token is right."""

    def __init__(self, num_classes: int, sequences: bool = False) -> None:
        super().__init__()
        self.loss = MeanMetric()
        self.acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_INDEX)
        self.exact_acc = MeanMetric() if sequences else None

    def update(
        self,
        loss: Tensor,
        n_scored: Tensor,
        preds: Tensor,
        target: Tensor,
        exact: Tensor | None = None,
    ) -> None:
        self.loss.update(loss, weight=n_scored)
        self.acc.update(preds, target)
        if self.exact_acc is not None and exact is not None:
            self.exact_acc.update(exact)

    def compute_and_reset(self) -> dict[str, Tensor]:
        """``loss``, ``acc`` and, for sequences, ``exact_acc``, by name."""
        metrics = {"loss": self.loss.compute(), "acc": self.acc.compute()}
        if self.exact_acc is not None:
            metrics["exact_acc"] = self.exact_acc.compute()
        for metric in self.children():
            metric.reset()
        return metrics


def exact_sequences(rows: Tensor, correct: Tensor, n_rows: int) -> Tensor:
    """1.0 for each of ``n_rows`` sequences whose scored tokens (``correct``, one per scored
    position, in order, ``rows`` their sequence) are all right, 0.0 otherwise; sequences with no
    scored token are left out."""
    wrong = torch.zeros(n_rows, device=correct.device).index_add_(0, rows, (~correct).float())
    return (wrong[rows.unique()] == 0).float()


# Where a checkpoint taken inside a gradient accumulation keeps the step's summed loss and count.
STEP_SUMS = "mixerlab_step_sums"


class _SequenceModule(pl.LightningModule):
    """Shared optimisation, aux-loss handling and per-validation-set metrics."""

    def __init__(
        self,
        model: nn.Module,
        *,
        num_classes: int,
        optimizer: Callable[[list[dict[str, Any]]], Optimizer],
        scheduler: Callable[[Optimizer], LRScheduler] | None = None,
        val_set_names: Sequence[str] = ("val",),
        compile: bool = False,
        sequences: bool = False,
    ) -> None:
        """``sequences``: also score whole sequences (``val/exact_acc``: every scored token of a
        sequence right)."""
        super().__init__()
        if not val_set_names:
            raise ValueError("val_set_names needs at least one name (one per val dataloader)")
        self.model = model
        if compile:
            model.compile()  # in place: state_dict keys stay the same, checkpoints stay portable
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_set_names = list(val_set_names)
        # per-set metrics only when there are several sets; val_all covers them all together
        several = len(self.val_set_names) > 1
        self.val_sets = nn.ModuleList(
            _ValSet(num_classes, sequences) for _ in self.val_set_names if several
        )
        self.val_all = _ValSet(num_classes, sequences)
        self.sequences = sequences
        self.grad_norm: Tensor | None = None  # of the last optimiser step, before clipping
        self._step_sums: Tensor | None = None  # this step's summed loss and scored count so far

    # -- to be provided by the task-specific subclasses ---------------------------------------
    def _scored(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(N, C) logits and (N,) targets over the positions (or sequences) that are scored."""
        raise NotImplementedError

    def _val_extras(self, loss: Tensor) -> dict[str, Tensor]:
        """Extra metrics derived from the overall validation loss."""
        return {}

    # -- steps ---------------------------------------------------------------------------------
    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.model(tokens, mask)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """The batch's loss summed over its scored tokens (or sequences), the auxiliary loss
        weighted by their count: :meth:`on_before_optimizer_step` divides the step's gradient
        by the count over every micro-batch and process, so the step takes the mean over all
        its scored tokens, however they fall across ranks and micro-batches."""
        logits, target = self._scored(batch)
        loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
        scored = (target != IGNORE_INDEX).sum().to(loss.dtype)
        sums = torch.stack((loss.detach(), scored))
        if self._step_sums is not None:  # earlier micro-batches' (a resumed one's on the CPU)
            sums = sums + self._step_sums.to(sums.device)
        self._step_sums = sums
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        aux = self.model.aux_loss
        if aux.requires_grad:  # set by a mixer/MoE during this forward, not the constant zero
            self.log("train/aux_loss", aux)
            loss = loss + aux * scored
        return loss

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        """Turn the accumulated gradient of summed losses into that of the step's mean loss.

        Lightning divides each micro-batch's loss by ``accumulate_grad_batches`` (K) and DDP
        averages gradients over the W processes, so the gradient holds the sum over the step's
        scored tokens divided by K W: multiplying it by K W / N, N the count over every
        micro-batch and process (one all-reduce), gives the mean over the N tokens, the gradient
        one process would take on the whole step's batch. Logs that mean as ``train/loss``."""
        if self._step_sums is None:
            return
        total, scored = self.trainer.strategy.reduce(self._step_sums, reduce_op="sum")
        self._step_sums = None
        scored = scored.clamp_min(1)
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size / scored
        for parameter in self.parameters():
            if parameter.grad is not None:
                parameter.grad.mul_(scale)
        self.log("train/loss", total / scored, prog_bar=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint inside a gradient accumulation (an interrupt's) keeps the step's loss and
        count so far, as it keeps the gradients (ResumeState): the resumed step divides by the
        same count."""
        if self._step_sums is not None:
            checkpoint[STEP_SUMS] = self._step_sums.detach().cpu()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._step_sums = checkpoint.get(STEP_SUMS)

    def validation_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        logits, target = self._scored(batch)
        n_scored = (target != IGNORE_INDEX).sum()
        loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
        loss = loss / n_scored.clamp_min(1)
        preds = logits.argmax(dim=-1)
        exact = None
        if self.sequences:  # per-position targets: the scored positions' rows, in order
            rows = (batch["target"] != IGNORE_INDEX).nonzero()[:, 0]
            exact = exact_sequences(rows, preds == target, batch["target"].shape[0])
        if self.val_sets:
            self.val_sets[dataloader_idx].update(loss, n_scored, preds, target, exact)
        self.val_all.update(loss, n_scored, preds, target, exact)

    def on_validation_epoch_end(self) -> None:
        metrics: dict[str, Tensor] = {}
        for name, val_set in zip(self.val_set_names, self.val_sets, strict=False):
            for metric, value in val_set.compute_and_reset().items():
                metrics[f"val/{metric}@{name}"] = value
        overall = self.val_all.compute_and_reset()
        loss = overall.pop("loss")
        metrics.update({f"val/{metric}": value for metric, value in overall.items()})
        metrics.update(self._val_extras(loss))
        # torchmetrics has already reduced over DDP ranks; sync_dist only silences the warning
        self.log_dict(metrics, sync_dist=True)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)

    def val_metric_names(self) -> list[str]:
        """Every name ``on_validation_epoch_end`` logs, known before training: a run checks its
        checkpoint monitor against them, and W&B summarises them."""
        per_set = ["loss", "acc", *(["exact_acc"] if self.sequences else [])]
        names = ["val/loss", *[f"val/{m}" for m in per_set[1:]], *self._val_extras(torch.zeros(()))]
        for name in self.val_set_names if self.val_sets else ():
            names += [f"val/{metric}@{name}" for metric in per_set]
        return names

    # -- optimisation --------------------------------------------------------------------------
    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip by the global gradient norm (the Trainer's ``gradient_clip_val``; none when unset)
        and keep that norm, taken before clipping, as :attr:`grad_norm`: logged as
        ``train/grad_norm`` and watched by
        :class:`~mixerlab.lightning_modules.callbacks.StopOnDivergence`. One norm computation serves
        both (Lightning's own clipping would compute it and drop it).
        """
        params = [
            p for group in optimizer.param_groups for p in group["params"] if p.grad is not None
        ]
        self.grad_norm = torch.nn.utils.clip_grad_norm_(params, gradient_clip_val or math.inf)
        self.log("train/grad_norm", self.grad_norm)

    def configure_optimizers(self) -> Optimizer | dict[str, Any]:
        # the lr a Hydra partial (conf/optim) was given, for the mixers' learning-rate caps
        lr = getattr(self.optimizer_factory, "keywords", {}).get("lr")
        optimizer = self.optimizer_factory(parameter_groups(self.model, lr))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }


class LanguageModelModule(_SequenceModule):
    """Next-token prediction: cross-entropy over positions whose target is not -100.

    ``val/bpb`` (bits per byte) = loss / ln 2 / bytes_per_token makes byte-level and BPE runs
    comparable; pass ``bytes_per_token=None`` for synthetic tasks where bytes mean nothing. A
    prefix LM (``model.prefix_lm``) reads each batch's ``"prefix"`` both ways.
    """

    def __init__(self, model: nn.Module, *, bytes_per_token: float | None, **kwargs: Any) -> None:
        super().__init__(model, num_classes=model.vocab_size, **kwargs)
        if bytes_per_token is not None and bytes_per_token <= 0:
            raise ValueError(f"bytes_per_token must be positive or None, got {bytes_per_token}")
        self.bytes_per_token = bytes_per_token
        self.reads_prefix = getattr(model, "prefix_lm", False)  # a SequenceModel's option

    def _scored(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        # the head runs only where a target is scored: the loss reads nothing else
        scored = batch["target"] != IGNORE_INDEX
        prefix = {"prefix": batch["prefix"]} if self.reads_prefix else {}  # only a prefix LM's
        logits = self.model(batch["input"], batch["mask"], scored=scored, **prefix)
        return logits, batch["target"][scored]

    def _val_extras(self, loss: Tensor) -> dict[str, Tensor]:
        extras = {"val/ppl": loss.exp()}
        if self.bytes_per_token is not None:
            extras["val/bpb"] = loss / math.log(2) / self.bytes_per_token
        return extras


class Seq2SeqModule(_SequenceModule):
    """A target written token by token from a source (an encoder-decoder's task): cross-entropy
    over the target's tokens, its end token included, and ``val/exact_acc``, the share of targets
    whose every token is right.

    That share is read teacher-forced, and equals greedy decoding's exact match: if every token
    is the argmax given the true prefix, greedy decoding writes exactly the target (each step's
    prefix is the true one), and if greedy decoding writes the target, each of its steps was
    such an argmax. One forward pass per batch thus scores what generation would.
    """

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, num_classes=model.vocab_size, **{"sequences": True, **kwargs})

    def _scored(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        scored = batch["target"] != IGNORE_INDEX
        logits = self.model(
            batch["source"], batch["input"], batch["source_mask"], batch["mask"], scored=scored
        )
        return logits, batch["target"][scored]

    def _val_extras(self, loss: Tensor) -> dict[str, Tensor]:
        return {"val/ppl": loss.exp()}


class ClassificationModule(_SequenceModule):
    """One label per sequence from the model's pooled logits (B, num_classes)."""

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        if model.num_classes is None:
            raise ValueError("ClassificationModule needs a model built with num_classes=<int>")
        super().__init__(model, num_classes=model.num_classes, **kwargs)

    def _scored(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self.model(batch["input"], batch["mask"]), batch["target"]
