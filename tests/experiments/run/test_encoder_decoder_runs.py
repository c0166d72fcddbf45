"""model=encoder_decoder: seq2seq tasks train through the run, every encoder-capable mixer as the
encoder and every mixer as the decoder; the combinations that cannot work are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from configs import compose_config, conf_options, run_config
from omegaconf import OmegaConf

from mixerlab.experiments.run.budget import size_model
from mixerlab.experiments.run.build import build_datamodule, build_model
from mixerlab.experiments.run.schema import ConfigError
from mixerlab.experiments.run.train import train
from mixerlab.lightning_modules.tasks import build_task
from mixerlab.mixers import EncoderDecoderModel, get_mixer_class, register_mixer

SEQ2SEQ = (
    "model=encoder_decoder", "task=copying", "model.d_model=32", "model.n_layers=1",
    "model.encoder.n_layers=1", "task.datamodule.max_length=6", "task.datamodule.num_train=64",
    "task.datamodule.num_val=16", "task.datamodule.batch_size=8",
)  # fmt: skip
# The data of SEQ2SEQ alone, for the designs to choose the model.
DATA = tuple(o for o in SEQ2SEQ if o.startswith(("task", "model.d_model")))
RUN = ("debug=default", "logger=none", "callbacks.progress_bar=false")
# Every shipped preset (plugin and hybrid are templates: a name or a pattern to fill in).
PRESETS = [m for m in conf_options("mixer") if m not in ("plugin", "hybrid")]


def _depth(preset: str) -> int:
    """The fewest layers a preset takes: a hybrid's pattern length, else one."""
    node = compose_config(f"mixer={preset}").mixer
    return len(node.pattern) if node.name == "hybrid" else 1


def _train(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str, base: tuple = SEQ2SEQ
) -> dict:
    monkeypatch.setenv("MIXERLAB_CACHE", str(tmp_path / "cache"))
    train(compose_config(*base, *RUN, *overrides), tmp_path / "run")
    return json.loads((tmp_path / "run" / "results.json").read_text())


# Each preset in one slot, attention in the other: the encoder's mixer in encoder mode (its
# preset composed under model.encoder.mixer), or the decoder's, causal, with its cross-mixers.
SLOTS = {
    "encoder": lambda m: ("mixer=attention", f"+mixer@model.encoder.mixer={m}",
                          f"model.encoder.n_layers={_depth(m)}"),
    "decoder": lambda m: (f"mixer={m}", "model.encoder.mixer=attention",
                          f"model.n_layers={_depth(m)}"),
}  # fmt: skip


@pytest.mark.parametrize("slot", SLOTS)
@pytest.mark.parametrize("mixer", PRESETS)
def test_every_mixer_trains_in_either_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mixer: str, slot: str
) -> None:
    results = _train(tmp_path, monkeypatch, *SLOTS[slot](mixer))
    assert results["status"] == "finished" and results["task"] == "copying"
    assert {"val/acc", "val/exact_acc", "val/loss"} <= set(results["metrics"])
    assert results["state_size"] > 0  # the decoder's state and the cached source
    preset = OmegaConf.to_container(compose_config(f"mixer={mixer}").mixer)
    recorded = results["config"]["model"]["encoder"]["mixer"] if slot == "encoder" else None
    assert recorded == (preset if slot == "encoder" else None)  # the run's own record says so


def test_the_encoder_takes_a_mixer_preset_and_a_linear_cross_mixer(tmp_path: Path) -> None:
    config = run_config(
        *SEQ2SEQ, "mixer=attention", "+mixer@model.encoder.mixer=hyena",
        "model.encoder.cross_mixer=linear_attention", "+model.encoder.cross_hparams.n_heads=2",
        f"cache_dir={tmp_path}",
    )  # fmt: skip
    model = build_model(config, build_datamodule(config))
    assert isinstance(model, EncoderDecoderModel)
    assert type(model.encoder.blocks[0].mixer).__name__ == "HyenaMixer"
    assert not model.encoder.causal and model.decoder.causal
    cross = model.decoder.blocks[0].cross
    assert type(cross).__name__ == "LinearCrossAttention" and cross.n_heads == 2
    assert model.max_source_len == 6 and model.max_len == 7


def test_a_parameter_budget_sizes_both_stacks(tmp_path: Path) -> None:
    config = run_config(*SEQ2SEQ, "model.budget.params=67000", f"cache_dir={tmp_path}")
    dm = build_datamodule(config)
    sizing = size_model(config, dm)
    model = sizing.build()
    assert isinstance(model, EncoderDecoderModel) and sizing.budget is not None
    assert sizing.budget.reached == model.num_params()
    assert abs(model.num_params() / 67_000 - 1) <= 0.05
    assert model.encoder.d_model == model.decoder.d_model == sizing.arguments["d_model"] != 32


def test_flops_per_token_count_the_source_and_the_target(tmp_path: Path) -> None:
    config = run_config(*SEQ2SEQ, f"cache_dir={tmp_path}")
    model = build_model(config, build_datamodule(config))
    source, target = 6 * model.flops_per_source_token(6), 7 * model.flops_per_target_token(7, 6)
    assert model.flops_per_token(7) == pytest.approx((source + target) / 13)
    assert model.state_size(7) == model.decoder.state_size(7, 6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ("task=copying", "model=default"),
            r"task 'copying' is a seq2seq task .* add model=encoder_decoder",
        ),
        (
            ("model=encoder_decoder", "task=mqar"),
            r"task 'mqar' is a lm task with no source to encode; pick a seq2seq task \(",
        ),
        (
            (*SEQ2SEQ, "model.encoder.cross_mixer=conv"),
            r"cross_mixer='conv' is not a registered cross-mixer; known cross-mixers: attention, "
            "linear_attention",
        ),
        (
            (*SEQ2SEQ, "+model.encoder.cross_hparams.heads=2"),
            r"model\.encoder\.cross_hparams\.heads",
        ),
        ((*SEQ2SEQ, "model.encoder.mixer=atention"), r"did you mean attention"),
        ((*SEQ2SEQ, "model.encoder.n_layers=0"), r"model\.encoder\.n_layers must be >= 1"),
    ],
)
def test_combinations_that_cannot_work_are_refused_with_the_fix(
    overrides: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        run_config(*overrides)


@pytest.mark.usefixtures("scratch_registries")
def test_a_decoder_only_mixer_decodes_but_cannot_encode() -> None:
    conv = get_mixer_class("conv")
    register_mixer("_test_decoder_only")(type("DecoderOnly", (conv,), {"supports_encoder": False}))
    message = r"mixer '_test_decoder_only' is decoder-only .* cannot be the encoder"
    with pytest.raises(ConfigError, match=message):
        run_config(*SEQ2SEQ, "model.encoder.mixer=_test_decoder_only")
    with pytest.raises(ConfigError, match=message):  # the encoder takes the run's mixer by default
        run_config(*SEQ2SEQ, "mixer=conv", "mixer.name=_test_decoder_only")
    decoder = ("mixer=conv", "mixer.name=_test_decoder_only", "model.encoder.mixer=conv")
    assert run_config(*SEQ2SEQ, *decoder)["mixer"]["name"] == "_test_decoder_only"


DESIGNS = {  # design -> (task type, causal, an encoder-decoder)
    "encoder_decoder": ("seq2seq", True, True),
    "decoder_only": ("lm", True, False),
    "prefix_lm": ("lm", True, False),
    "encoder_only": ("lm", False, False),
}


@pytest.mark.parametrize("design", DESIGNS)
def test_each_design_reads_the_task_its_way_and_scores_whole_sequences(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, design: str
) -> None:
    for task in ("reversal", "sorting", "copying", "addition"):
        config = run_config(*DATA, f"task={task}", f"design={design}")
        task_type, causal, encoder = DESIGNS[design]
        assert (config["task"]["type"], config["task"]["causal"]) == (task_type, causal)
        assert (config["model"]["encoder"] is not None) == encoder
        assert config["model"]["prefix_lm"] == (design == "prefix_lm")
    results = _train(tmp_path, monkeypatch, f"design={design}", base=DATA)
    assert results["status"] == "finished"
    assert {"val/acc", "val/exact_acc"} <= set(results["best"])


def test_the_experiment_sizes_every_design_to_one_budget(tmp_path: Path) -> None:
    sized = {}
    for design in DESIGNS:
        config = run_config(
            "experiment=seq2seq_designs", f"design={design}", f"cache_dir={tmp_path}"
        )
        task = config["task"]
        sized[design] = size_model(
            config, build_task(task["name"], seed=0, cache_dir=None, **task["datamodule"])
        ).budget
    assert {b.measure for b in sized.values()} == {"params"}
    assert all(abs(b.relative_error) <= 0.08 for b in sized.values())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            (*DATA, "design=prefix_lm", "mixer=conv"),
            r"mixer 'conv' reads only causally \(supports_prefix = False\), .* use "
            r"mixer=attention, or design=decoder_only",
        ),
        (
            (*DATA, "design=prefix_lm", "mixer=hybrid", "mixer.pattern=[attention,rnn]"),
            r"mixer 'rnn' reads only causally",
        ),
        (
            ("task=mqar", "model.prefix_lm=true"),
            r"task 'mqar' marks none; pick a seq2seq task in its prefix layout",
        ),
        (
            (*DATA, "design=encoder_decoder", "model.prefix_lm=true"),
            r"model.encoder .* reads it with an encoder: keep one of them",
        ),
    ],
)
def test_a_prefix_lm_needs_attention_and_a_marked_prefix(
    overrides: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        run_config(*overrides)


def test_a_prefix_lm_reads_the_source_both_ways_and_the_target_causally() -> None:
    config = run_config(*DATA, "design=prefix_lm")
    dm = build_datamodule(config)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    first_scored = (batch["target"] != -100).int().argmax(dim=1)
    assert (batch["prefix"] == first_scored + 1).all()  # the source and the start token
    model = build_model(config, dm).eval()
    plain = build_model(run_config(*DATA, "design=decoder_only"), dm).eval()
    plain.load_state_dict(model.state_dict())
    tokens, mask = batch["input"], batch["mask"]
    both_ways, causal = model(tokens, mask, prefix=batch["prefix"]), plain(tokens, mask)
    changed = tokens.clone()
    changed[:, 0] = (tokens[:, 0] + 1) % dm.vocab_size  # the source's first token
    read = (model(changed, mask, prefix=batch["prefix"]) - both_ways).abs().amax(dim=-1)
    for row, p in enumerate(batch["prefix"].tolist()):
        assert read[row, : p - 1].min() > 0  # every prefix position reads the first one ...
        assert (both_ways[row, :1] - causal[row, :1]).abs().max() > 0  # ... and the later ones


def test_an_encoder_decoder_does_not_read_a_prefix_layout() -> None:
    with pytest.raises(ConfigError, match=r"'reversal' is a lm task .* design=decoder_only"):
        run_config("task=reversal", "task.datamodule.layout=prefix")  # the task's default model


def test_a_seq2seq_task_brings_its_encoder_decoder() -> None:
    assert run_config("task=sorting")["model"]["encoder"]["cross_mixer"] == "attention"
    assert run_config("task=sorting", "design=decoder_only")["model"]["encoder"] is None
