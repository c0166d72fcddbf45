"""The LightningModules and their optimisation: the optimiser and schedule built from the config,
weight decay groups, the run summary and W&B mode, and the modules and the throughput monitor in a
real (tiny) fit loop."""

from __future__ import annotations

import csv
import functools
import math
from pathlib import Path

import hydra
import pytest
import pytorch_lightning as pl
import torch
from configs import compose_config
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from mixerlab.experiments.run.train import _summary
from mixerlab.experiments.run.wandb_mode import wandb_mode
from mixerlab.lightning_modules.callbacks import TRAINING_FLOPS_PER_FORWARD, ThroughputMonitor
from mixerlab.lightning_modules.loggers import HistoryLogger
from mixerlab.lightning_modules.modules import (
    ClassificationModule,
    LanguageModelModule,
    WarmupCosine,
    parameter_groups,
)
from mixerlab.lightning_modules.record import RunResults
from mixerlab.mixers import SequenceModel, TokenMixer

# conf/mixer/s4d.yaml's hyper-parameters, small
S4D_PRESET = {"selective": False, "init": "lin", "d_state": 8, "a_dt_max_lr": 1e-3}


# ------------------------------------------------------------------------------ unit pieces
def test_warmup_then_cosine_to_the_floor() -> None:
    schedule = WarmupCosine(warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert schedule(0) == pytest.approx(0.1)
    assert schedule(9) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.55)
    assert schedule(110) == pytest.approx(0.1)
    assert schedule(500) == pytest.approx(0.1)
    assert WarmupCosine(0, None, 0.1)(1000) == 1.0


def test_no_weight_decay_on_norms_biases_and_embeddings() -> None:
    model = SequenceModel(32, 16, 1, mixer="attention", max_len=8)
    decay, no_decay = parameter_groups(model)
    decayed = {id(p) for p in decay["params"]}
    assert id(model.embed.weight) not in decayed  # tied with the head
    assert id(model.pos_embed.weight) not in decayed
    assert id(model.norm.weight) not in decayed
    assert id(model.blocks[0].ffn.up.weight) in decayed
    assert id(model.blocks[0].ffn.up.bias) not in decayed
    assert "weight_decay" not in decay and no_decay["weight_decay"] == 0.0  # the optimiser's
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == model.num_params()


class _LogDecayTable(TokenMixer):
    """The parameters of a state-space mixer: a decay table that weight decay must not touch."""

    no_weight_decay = ("A_log",)

    def __init__(self, d_model: int, *, causal: bool = True, max_len: int | None = None) -> None:
        super().__init__(d_model, causal=causal, max_len=max_len)
        self.A_log = nn.Parameter(torch.zeros(d_model, 4))
        self.proj = nn.Linear(d_model, d_model)


def test_a_mixer_exempts_the_parameters_it_names_from_weight_decay() -> None:
    mixer = _LogDecayTable(8)
    decay, no_decay = parameter_groups(mixer)
    assert [id(p) for p in decay["params"]] == [id(mixer.proj.weight)]
    assert {id(p) for p in no_decay["params"]} == {id(mixer.A_log), id(mixer.proj.bias)}
    mixer.no_weight_decay = ("a_log", "proj.*")  # globs over the mixer's parameter names
    with pytest.raises(
        ValueError,
        match=r"^no_weight_decay pattern 'a_log' of _LogDecayTable matches no parameter; its "
        r"parameters are: A_log, proj.weight, proj.bias$",
    ):
        parameter_groups(mixer)
    mixer.no_weight_decay = ("A_*", "proj.*")
    assert parameter_groups(mixer)[0]["params"] == []


def test_a_mixer_caps_the_learning_rate_of_the_parameters_it_names() -> None:
    """``max_lr``: parameters train at min(cap, lr) in groups of their own, weight decay as
    before; at an lr below the cap nothing changes (two groups, the checkpoints' layout)."""
    mixer = _LogDecayTable(8)
    mixer.max_lr = {"A_log": 1e-3, "proj.weight": 2e-3}
    decay, no_decay, *capped = parameter_groups(mixer, lr=3e-3)
    assert decay["params"] == [] and no_decay["params"] == [mixer.proj.bias]
    assert [(g["params"], g["lr"], g.get("weight_decay")) for g in capped] == [
        ([mixer.A_log], 1e-3, 0.0),  # exempt from decay, capped
        ([mixer.proj.weight], 2e-3, None),  # decayed at the optimiser's rate, capped
    ]
    assert len(parameter_groups(mixer, lr=5e-4)) == 2  # under every cap: min(cap, lr) = lr
    with pytest.raises(ValueError, match="optimiser's lr is unknown"):
        parameter_groups(mixer)
    mixer.max_lr = {"B_*": 1e-3}
    with pytest.raises(ValueError, match=r"^max_lr pattern 'B_\*' of _LogDecayTable matches no"):
        parameter_groups(mixer, lr=3e-3)


def test_s4d_trains_a_and_dt_at_s4d_pys_rate_under_the_schedule() -> None:
    """mixer=s4d: A and dt at min(1e-3, lr) as s4d.py registers them, scaled by the same
    warmup-cosine as every other group."""
    optimizer, scheduler = _optimisation(
        "mixer=s4d", "optim.lr=4e-3", "optim.warmup_steps=0", "optim.min_lr_ratio=0.5",
        "trainer.max_steps=10",
    )  # fmt: skip
    model = SequenceModel(32, 16, 1, mixer="ssm", mixer_hparams=S4D_PRESET, max_len=8)
    module = LanguageModelModule(
        model, optimizer=optimizer, scheduler=scheduler, bytes_per_token=None
    )
    configured = module.configure_optimizers()
    opt, schedule = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    layer = model.blocks[0].mixer.layer
    capped = opt.param_groups[2:]
    assert [g["lr"] for g in capped] == [1e-3]
    assert {id(p) for p in capped[0]["params"]} == {
        id(layer.A_log), id(layer.A_imag), id(layer.log_dt)
    }  # fmt: skip
    for _ in range(10):
        opt.step()
        schedule.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-3)  # the cosine's end: half
    assert capped[0]["lr"] == pytest.approx(0.5e-3)


def _optimisation(*overrides: str) -> tuple:
    """The optimiser and scheduler factories ``build_module`` instantiates from the config."""
    optim = OmegaConf.to_container(compose_config(*overrides), resolve=True)["optim"]
    return hydra.utils.instantiate(optim["optimizer"]), hydra.utils.instantiate(optim["scheduler"])


def test_optimiser_and_schedule_are_instantiated_from_the_command_line_keys(
    tmp_path: Path,
) -> None:
    optimizer, scheduler = _optimisation(
        "optim.lr=0.01", "optim.weight_decay=0.2", "optim.betas=[0.8,0.9]",
        "optim.warmup_steps=10", "optim.min_lr_ratio=0.1", "trainer.max_steps=110",
    )  # fmt: skip
    model = SequenceModel(32, 16, 1, mixer="attention", max_len=8)
    module = LanguageModelModule(
        model, optimizer=optimizer, scheduler=scheduler, bytes_per_token=None
    )
    configured = module.configure_optimizers()
    assert configured["lr_scheduler"]["interval"] == "step"
    opt, schedule = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    assert decay["betas"] == (0.8, 0.9)
    assert id(model.embed.weight) in {id(p) for p in no_decay["params"]}
    lrs = []
    for _ in range(112):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.001) and lrs[9] == pytest.approx(0.01)
    assert lrs[60] == pytest.approx(0.0055) and lrs[111] == pytest.approx(0.001)
    # the schedule's state goes into checkpoints, which load tensors and plain values only
    torch.save(schedule.state_dict(), tmp_path / "schedule.pt")
    state = torch.load(tmp_path / "schedule.pt", weights_only=True)
    assert state["lr_lambdas"][0] == {"warmup_steps": 10, "total_steps": 110, "min_ratio": 0.1}


def test_no_scheduler_keeps_the_optimisers_learning_rate() -> None:
    model = SequenceModel(32, 16, 1, mixer="rnn", max_len=8)
    optimizer = functools.partial(torch.optim.SGD, lr=0.5)
    module = LanguageModelModule(model, optimizer=optimizer, bytes_per_token=None)
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.5


def test_summary_shows_every_validation_set(tmp_path: Path) -> None:
    per_set = {"val/acc@seq_len=64": 0.99, "val/acc@seq_len=128": 0.5}
    results = RunResults(
        status="finished", mixer="attention", task="induction_heads", seed=0, params=1,
        flops_per_token=2.0, metrics={"val/acc": 0.745, **per_set}, best={"val/acc": 0.745},
        tokens_per_s=10.0, wall_s=1.0, wandb_run_id=None, checkpoints={}, config={}, error=None,
    )  # fmt: skip
    lines = _summary(results, tmp_path).splitlines()
    assert "  val/acc@  seq_len=64 0.9900  seq_len=128 0.5000" in lines
    results.metrics = {"val/acc": 0.745}  # one val set: no per-set line
    assert "val/acc@" not in _summary(results, tmp_path)


def test_wandb_mode_env_wins_and_auto_needs_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert wandb_mode("auto") == "offline"
    assert wandb_mode("online") == "online"
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password secret\n")
    assert wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("online") == "disabled"


# ------------------------------------------------------------- modules in a real fit loop
class _ToyData(pl.LightningDataModule):
    """Random tokens; two validation sets so per-set metrics are exercised."""

    def __init__(self, task_type: str = "lm") -> None:
        super().__init__()
        self.task_type, self.vocab_size, self.max_len = task_type, 16, 8
        self.num_classes = 3 if task_type == "classification" else None
        self.val_set_names = ["short", "long"]

    def _loader(self, seed: int) -> DataLoader:
        gen = torch.Generator().manual_seed(seed)
        tokens = torch.randint(1, 16, (8, 8), generator=gen)
        mask = torch.ones(8, 8, dtype=torch.bool)
        mask[:4, 6:] = False  # some right padding
        if self.task_type == "lm":
            target = torch.where(mask, tokens.roll(-1, 1), torch.full_like(tokens, -100))
        else:
            target = torch.randint(0, 3, (8,), generator=gen)
        rows = [
            {"input": tokens[i], "target": target[i], "mask": mask[i]} for i in range(len(tokens))
        ]
        return DataLoader(rows, batch_size=4)  # default collate stacks the dicts' tensors

    def train_dataloader(self) -> DataLoader:
        return self._loader(0)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(1), self._loader(2)]


class _WithAux(nn.Module):
    """A model whose forward sets a differentiable auxiliary loss, like an MoE layer."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.inner, self.vocab_size = model, model.vocab_size

    def forward(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor | None = None,
        scored: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits = self.inner(tokens, mask, scored)
        self.aux_loss = 0.01 * logits.pow(2).mean()
        return logits

    def num_params(self) -> int:
        return self.inner.num_params()

    def flops_per_token(self, seq_len: int) -> float:
        return self.inner.flops_per_token(seq_len)


ADAMW = functools.partial(torch.optim.AdamW, lr=1e-3)


# A CPU trainer that writes and prints nothing of its own
QUIET = {
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "accelerator": "cpu",
    "num_sanity_val_steps": 0,
}


def _fit(module: pl.LightningModule, data: pl.LightningDataModule, tmp_path: Path) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=4,
        val_check_interval=2,
        logger=HistoryLogger(tmp_path),
        callbacks=[ThroughputMonitor()],
        log_every_n_steps=1,
        **QUIET,
    )
    trainer.fit(module, datamodule=data)
    return trainer


def test_language_model_metrics_per_val_set_and_bits_per_byte(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _WithAux(SequenceModel(16, 16, 1, mixer="conv", max_len=8))
    module = LanguageModelModule(
        model, optimizer=ADAMW, bytes_per_token=2.0, val_set_names=["short", "long"]
    )
    metrics = _fit(module, _ToyData(), tmp_path).callback_metrics
    for key in ("val/loss", "val/acc", "val/ppl", "val/bpb", "train/loss", "train/aux_loss"):
        assert key in metrics, key
    assert sorted(module.val_metric_names()) == sorted(k for k in metrics if k.startswith("val/"))
    for name in ("short", "long"):
        assert f"val/acc@{name}" in metrics and f"val/loss@{name}" in metrics
    loss = metrics["val/loss"].item()
    assert metrics["val/bpb"].item() == pytest.approx(loss / math.log(2) / 2.0, rel=1e-5)
    assert metrics["val/ppl"].item() == pytest.approx(math.exp(loss), rel=1e-5)
    per_set = [metrics[f"val/loss@{n}"].item() for n in ("short", "long")]
    assert min(per_set) <= loss <= max(per_set)  # overall = over both sets together
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["step", "wall_s"]
    assert {"train/tokens_per_s", "train/step_time_s", "params", "val/acc@short"} <= set(header)
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # one file, at one path


def test_throughput_counts_real_tokens_and_training_flops(tmp_path: Path) -> None:
    model = SequenceModel(16, 16, 1, mixer="attention", max_len=8)
    module = LanguageModelModule(model, optimizer=ADAMW, bytes_per_token=None)
    trainer = _fit(module, _ToyData(), tmp_path)
    (monitor,) = [cb for cb in trainer.callbacks if isinstance(cb, ThroughputMonitor)]
    # 4 steps over 2 batches of 4 rows of 8 tokens; the first batch has 4 rows with 2 padded
    assert monitor.tokens == 2 * (24 + 32)
    assert monitor.tokens_per_s > 0
    with (tmp_path / "metrics.csv").open() as f:
        rows = [row for row in csv.DictReader(f) if row["train/tokens_per_s"]]
    assert [int(row["step"]) for row in rows] == [0, 1, 2, 3]  # with train/loss, every step
    per_token = TRAINING_FLOPS_PER_FORWARD * model.flops_per_token(8)
    for row in rows:
        flops_per_s = float(row["train/device/flops_per_sec"])
        assert flops_per_s / float(row["train/tokens_per_s"]) == pytest.approx(per_token)
        assert row["train/loss"]
    assert "train/device/mfu" not in rows[0]  # no known peak FLOPs on a CPU


def test_classification_module_scores_pooled_logits(tmp_path: Path) -> None:
    model = SequenceModel(16, 16, 1, mixer="rnn", causal=False, max_len=8, num_classes=3)
    module = ClassificationModule(model, optimizer=ADAMW, val_set_names=["short", "long"])
    metrics = _fit(module, _ToyData("classification"), tmp_path).callback_metrics
    assert 0.0 <= metrics["val/acc"].item() <= 1.0
    assert "val/ppl" not in metrics and "val/acc@long" in metrics
    assert sorted(module.val_metric_names()) == sorted(k for k in metrics if k.startswith("val/"))


def _one_step(module: pl.LightningModule, batches: list[dict], accumulate: int) -> None:
    """One optimiser step over ``batches`` (one per micro-batch), in order."""
    trainer = pl.Trainer(
        max_steps=1, accumulate_grad_batches=accumulate, logger=False, limit_val_batches=0, **QUIET
    )
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))


@pytest.mark.parametrize("aux", [False, True], ids=["plain", "with_aux_loss"])
def test_a_step_takes_the_mean_over_every_scored_token_of_its_micro_batches(aux: bool) -> None:
    """Two micro-batches that score 3 and 13 tokens step like the one batch holding both: the
    mean over the 16 tokens, not the mean of the two means (which weighs the 3 like the 13)."""
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 16, (4, 8), generator=gen)
    target = torch.randint(1, 16, (4, 8), generator=gen)
    target[:2] = -100
    target[0, 5:], target[1, 7] = tokens[0, 5:], tokens[1, 7]  # 3 scored in the first half
    target[2, :3] = -100  # 13 in the second
    whole = {"input": tokens, "target": target, "mask": torch.ones(4, 8, dtype=torch.bool)}
    halves = [
        {key: value[rows] for key, value in whole.items()} for rows in (slice(2), slice(2, 4))
    ]
    sgd = functools.partial(torch.optim.SGD, lr=0.5)  # the step is proportional to the gradient
    weights = []
    for batches, accumulate in (([whole], 1), (halves, 2)):
        torch.manual_seed(0)
        model = SequenceModel(16, 16, 1, mixer="attention", max_len=8)
        model = _WithAux(model) if aux else model
        _one_step(
            LanguageModelModule(model, optimizer=sgd, bytes_per_token=None), batches, accumulate
        )
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(weights[1], weights[0], atol=1e-6, rtol=1e-5)
