"""Each paper preset against a table written from its paper: every setting the paper gives equals
the composed config for each mixer the paper trains (per-mixer settings included), and every
setting cut for CPU is named in the preset's header beside the paper's value. A later change to
a shared default (conf/model, conf/optim, a task's defaults) that moves a preset fails here."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import numpy as np
import pytest
from configs import compose_config, conf_options, run_config

from mixerlab.experiments.run import study_plan
from mixerlab.experiments.run.study import Command

# -- the papers' settings, as config keys -----------------------------------------------------

# Zoology (Arora et al. 2023), Figure 2: HazyResearch/zoology at d88d6f5,
# experiments/paper_configs/iclr24_zoology_figure2/configs.py with zoology/config.py's defaults
# (TrainConfig, ModelConfig) and train.py (AdamW, cosine per epoch to 0, early stop at 0.99).
ZOOLOGY_FIGURE_2 = {
    "task.datamodule.vocab_size": 8192,
    "task.datamodule.seq_len": 64,  # its (64, 4) panel
    "task.datamodule.num_kv_pairs": 4,
    "task.datamodule.num_train": 100_000,
    "task.datamodule.num_val": 3_000,
    "task.datamodule.power_a": 0.01,
    "task.datamodule.random_non_queries": False,
    "model.n_layers": 2,
    "model.ffn": "none",  # state_mixer Identity
    "model.tie_embeddings": True,
    "optim.weight_decay": 0.1,
    "optim.betas": [0.9, 0.999],  # torch.optim.AdamW's defaults
    "optim.warmup_steps": 0,
    "optim.min_lr_ratio": 0.0,  # CosineAnnealingLR eta_min=0
    "optim.grad_clip": None,
    "trainer.limit_val_batches": 1.0,  # all 3k test examples
}
ZOOLOGY_PER_MIXER = {
    # MHA(num_heads=1, dropout=0.1, bias=True); max_position_embeddings=input_seq_len
    "attention": {
        "model.pos": "learned",
        "model.norm": "layernorm",
        "model.mixer_init": "zoology",
        "mixer.n_heads": 1,
        "mixer.dropout": 0.1,
        "mixer.bias": True,
    },
    # MambaBlock: RMSNorm, mamba_ssm's init; no positions
    "mamba": {"model.pos": "none", "model.norm": "rmsnorm", "model.mixer_init": "mamba"},
    "hyena": {"model.pos": "none", "model.norm": "layernorm", "model.mixer_init": "zoology"},
    "baseconv": {"model.pos": "none", "model.norm": "layernorm", "model.mixer_init": "zoology"},
    "based": {"model.pos": "none", "model.norm": "layernorm", "model.mixer_init": "zoology"},
}
ZOOLOGY_LR_GRID = np.logspace(-4, -2, 4).tolist()

# Mamba (Gu and Dao 2023), section 4.1.2 and appendix E.1: induction heads (Table 2).
MAMBA_INDUCTION = {
    "task.datamodule.vocab_size": 16,
    "task.datamodule.seq_len": 256,
    "task.datamodule.batch_size": 8,
    "task.datamodule.fresh_every_epoch": True,
    "model.n_layers": 2,
    "optim.weight_decay": 0.0,  # Adam, no weight decay
    "optim.betas": [0.9, 0.999],  # Adam's defaults (the paper names none)
    "optim.grad_clip": None,
    "optim.warmup_steps": 0,  # a constant learning rate
    "optim.min_lr_ratio": 1.0,
    "trainer.limit_val_batches": 1.0,
}
MAMBA_INDUCTION_PER_MIXER = {
    "mamba": {
        "model.d_model": 64,
        "model.pos": "none",
        "model.ffn": "none",
        "model.norm": "rmsnorm",
        "model.mixer_init": "mamba",
        "optim.lr": 1e-3,
    },
    # "attention at D = 128 with 8 heads"; "did not learn at LR 1e-3"; Table 2's MHA-RoPE
    "attention": {"model.d_model": 128, "mixer.n_heads": 8, "model.pos": "rope", "optim.lr": 2e-4},
    "hyena": {"optim.lr": 2e-4},
}

# Mamba, section 4.1.1 and appendix E.1: selective copying (Table 1).
MAMBA_SELECTIVE_COPY = {
    "task.datamodule.num_data_tokens": 16,
    "task.datamodule.vocab_size": 17,  # the paper's 16 plus mixerlab's padding id
    "task.datamodule.batch_size": 64,
    "task.datamodule.fresh_every_epoch": True,
    "model.n_layers": 2,
    "model.d_model": 64,
    "model.ffn": "none",
    "trainer.limit_val_batches": 1.0,
}
MAMBA_SELECTIVE_COPY_PER_MIXER = {
    "mamba": {"model.pos": "none", "model.norm": "rmsnorm", "model.mixer_init": "mamba"},
    "s4d": {"model.pos": "none"},
    "hyena": {"model.pos": "none"},
}

# LRA (Tay et al. 2021): google-research/long-range-arena, listops/configs/base_listops_config.py,
# listops/train.py (Adam beta1 0.9, beta2 0.98, weight decay 0.1), data/listops.py.
LRA_LISTOPS = {
    "task.datamodule.batch_size": 32,
    "task.datamodule.max_args": 10,
    "task.datamodule.leaf_prob": 0.75,  # VALUE_P 0.25
    "task.datamodule.max_depth": 9,  # LRA's 10 counts the leaf level
    "model.n_layers": 4,
    "model.ffn_mult": 2.0,  # mlp_dim 1024 / emb_dim 512
    "optim.weight_decay": 0.1,
    "optim.betas": [0.9, 0.98],
    "trainer.limit_val_batches": 1.0,
}
LRA_PER_MIXER = {"attention": {"mixer.n_heads": 8}}

# MAD (Poli et al. 2024): athms/mad-lab's mad/configs.py (MADConfig: 12,800 training and 1,280
# test examples, AdamW, cosine), pl_model_wrapper.py (torch.optim.AdamW with its default betas,
# no clipping), language_model.py (2 blocks of mixer and SwiGLU, LayerNorm) and configs/layers/.
MAD = {
    "task.datamodule.num_train": 12_800,
    "task.datamodule.num_val": 1_280,
    "model.n_layers": 2,
    "model.ffn": "glu",
    "model.norm": "layernorm",
    "optim.betas": [0.9, 0.999],
    "optim.grad_clip": None,
    "optim.min_lr_ratio": 0.0,
    "optim.scheduler.lr_lambda.total_steps": 20_000,  # 200 epochs of 100 steps
    "trainer.limit_val_batches": 1.0,
}
MAD_PER_MIXER = {
    "attention": {"mixer.n_heads": 8, "model.pos": "rope"},  # mh-attention.yml: head width 8
    "gla": {"model.pos": "none"},
    "mamba": {"mixer.d_state": 4, "mixer.expand": 2, "mixer.conv_kernel": 4},  # mamba.yml
    "hyena": {"mixer.order": 2, "mixer.filter_order": 4, "mixer.filter_emb_dim": 3},
    "rnn": {"model.pos": "none"},
    "baseconv": {"model.pos": "none"},
}

# What each preset cuts for CPU: key, our value, and the paper's value as its header writes it.
CUTS = {
    "zoology_mqar": [
        ("task.datamodule.batch_size", 64, "512"),
        ("trainer.max_steps", 3000, "12.5k steps"),
    ],
    "mamba_induction": [
        ("trainer.max_steps", 6000, "204,800"),
        ("task.datamodule.test_seq_lens", [64, 128, 256, 512, 1024, 2048], "2^20"),
    ],
    "mamba_selective_copy": [
        ("task.datamodule.seq_len", 256, "4096"),
        ("trainer.max_steps", 4000, "400k"),
        ("optim.lr", 1e-3, "1e-4"),
    ],
    "mad": [
        ("model.d_model", 64, "width 64 (128)"),
        ("task.datamodule.batch_size", 32, "batch 32 (128)"),
        ("trainer.max_steps", 4000, "4,000 steps (200 epochs:\n# 20,000 steps of 128)"),
        ("optim.weight_decay", 0.0, "weight decay 0\n# (0 and 0.1)"),
        ("optim.warmup_steps", 200, "200 warmup steps (none"),
    ],
    "lra_listops": [
        ("model.d_model", 64, "512"),
        ("trainer.max_steps", 1500, "5000"),
        ("optim.lr", 1e-3, "0.05"),
        ("task.datamodule.max_length", 499, "2000"),
    ],
}

PAPERS = {
    "zoology_mqar": (ZOOLOGY_FIGURE_2, ZOOLOGY_PER_MIXER),
    "zoology_grid": ({**ZOOLOGY_FIGURE_2, "task.datamodule.num_kv_pairs": 4}, ZOOLOGY_PER_MIXER),
    "mamba_induction": (MAMBA_INDUCTION, MAMBA_INDUCTION_PER_MIXER),
    "mamba_selective_copy": (MAMBA_SELECTIVE_COPY, MAMBA_SELECTIVE_COPY_PER_MIXER),
    "lra_listops": (LRA_LISTOPS, LRA_PER_MIXER),
    "mad": (MAD, MAD_PER_MIXER),
}
CASES = [(preset, mixer) for preset, (_, per_mixer) in PAPERS.items() for mixer in per_mixer]


def setting(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize(("preset", "mixer"), CASES, ids=[f"{p}-{m}" for p, m in CASES])
def test_preset_equals_its_paper_for_each_mixer(preset: str, mixer: str) -> None:
    shared, per_mixer = PAPERS[preset]
    config = run_config(f"experiment={preset}", f"mixer={mixer}")
    expected = {**shared, **per_mixer[mixer]}
    got = {key: setting(config, key) for key in expected}
    assert got == expected, {k: got[k] for k in expected if got[k] != expected[k]}


@pytest.mark.parametrize("preset", CUTS)
def test_every_cut_is_in_the_header_beside_the_papers_value(preset: str) -> None:
    header = (files("mixerlab.conf") / "experiment" / f"{preset}.yaml").read_text()
    config = run_config(f"experiment={preset}")
    for key, ours, papers in CUTS[preset]:
        assert setting(config, key) == ours, key
        assert papers in header, f"{preset}'s header does not give the paper's {key}: {papers}"


def test_the_command_line_wins_over_a_per_mixer_setting() -> None:
    """conf/per_mixer/ sets what the paper gives one mixer; an explicit override still wins."""
    config = run_config("experiment=mamba_induction", "mixer=attention", "model.d_model=64")
    assert config["model"]["d_model"] == 64 and config["mixer"]["n_heads"] == 8
    plain = run_config("mixer=attention")  # outside a paper preset nothing per-mixer applies
    assert plain["mixer"]["n_heads"] == 4 and plain["model"]["pos"] == "learned"


def test_zoology_lr_grid_and_early_stop() -> None:
    swept = compose_config("experiment=zoology_mqar", "sweep=zoology_lr", hydra=True)
    grid = [float(x) for x in swept.hydra.sweeper.params["optim.lr"].split(",")]
    assert grid == pytest.approx(ZOOLOGY_LR_GRID, rel=1e-3)
    grid_sweep = compose_config("experiment=zoology_grid", "sweep=zoology_grid", hydra=True)
    params = grid_sweep.hydra.sweeper.params
    assert [float(x) for x in params["optim.lr"].split(",")] == pytest.approx(
        ZOOLOGY_LR_GRID, rel=1e-3
    )
    # Figure 2's mixers that mixerlab builds (RWKV and H3 are not built)
    assert params["mixer"].split(",") == ["attention", "baseconv", "based", "hyena", "mamba"]
    (stop,) = run_config("experiment=zoology_mqar")["callbacks"]["extra"]
    assert stop["_target_"].endswith("EarlyStopping") and stop["stopping_threshold"] == 0.99
    assert stop["monitor"] == "val/acc" and stop["mode"] == "max"


@pytest.mark.parametrize("seq_len", [64, 128, 256])
def test_zoology_grid_pairs_follow_the_length(seq_len: int) -> None:
    data = run_config("experiment=zoology_grid", f"task.datamodule.seq_len={seq_len}")["task"]
    assert data["datamodule"]["num_kv_pairs"] == seq_len // 16


# The mixer presets that are Zoology's mixers, layer by layer, as its configs build them
# (HazyResearch/zoology at d88d6f5): iclr24_zoology_figure2/configs.py's "base_conv"
# (BaseConv kernel_size [3, -1, ...] by layer, implicit long filter) and "based" (Hybrid of
# BaseConv kernel 3 and Based: Taylor map, feature_dim 8, 1 head); arxiv24_based_figure2's
# BaseConv + MHA hybrid (1 head); arxiv24_based_ablations/02-01_sliding.py's "based_w_slide"
# (BaseConv kernel 3, Based feature_dim 16, SlidingAttn block_size 128, 3 layers).
ZOOLOGY_MIXERS = {
    "baseconv": [
        {"name": "base_conv", "kernel_size": 3},
        {"name": "base_conv", "kernel_size": -1, "implicit": True},
    ],
    "based": [
        {"name": "base_conv", "kernel_size": 3},
        {"name": "linear_attention", "n_heads": 1, "feature_map": "taylor", "feature_dim": 8,
         "decay": "none"},
    ],
    "zoology_hybrid": [
        {"name": "base_conv", "kernel_size": 3},
        {"name": "attention", "n_heads": 1},
    ],
    "based_sliding": [
        {"name": "base_conv", "kernel_size": 3},
        {"name": "linear_attention", "n_heads": 1, "feature_map": "taylor", "feature_dim": 16,
         "decay": "none"},
        {"name": "sliding_window", "n_heads": 1, "window": 128},  # Zoology's block_size
    ],
}  # fmt: skip


@pytest.mark.parametrize("option", ZOOLOGY_MIXERS)
def test_zoologys_mixers_are_its_configs_layer_by_layer(option: str) -> None:
    node = run_config(f"mixer={option}", "model.n_layers=6")["mixer"]
    assert (node["name"], node["label"]) == ("hybrid", option)
    assert node["pattern"] == ZOOLOGY_MIXERS[option]


# MAD's harder settings, the first step of each task's ladder (../shared/reference/mad.md, from
# athms/mad-lab's configs/tasks/*.yml): the one datamodule key experiment=mad changes, and to what.
MAD_FIRST_STEPS = {
    "mad_recall": ("vocab_size", 32),
    "mad_fuzzy_recall": ("vocab_size", 32),
    "mad_noisy_recall": ("frac_noise", 0.4),
    "mad_selective_copy": ("num_tokens_to_copy", 32),
    "mad_compression": ("vocab_size", 32),
    "mad_memorization": ("vocab_size", 512),
}


def mad_settings() -> list[str]:
    params = compose_config("experiment=mad", hydra=True).hydra.sweeper.params
    return [name.strip() for name in params["mad_setting"].split(",")]


def test_mad_sweeps_each_tasks_baseline_and_its_first_harder_step() -> None:
    """Every option of conf/mad_setting/ is swept, and per task they are MAD's baseline (the
    task's own config) and one setting that changes one key to its ladder's first step."""
    assert sorted(mad_settings()) == sorted(conf_options("mad_setting"))
    by_task: dict[str, list[dict[str, Any]]] = {}
    for option in mad_settings():
        task = run_config("experiment=mad", f"mad_setting={option}")["task"]
        by_task.setdefault(task["name"], []).append(task["datamodule"])
    assert sorted(by_task) == sorted(MAD_FIRST_STEPS)
    for name, (key, harder) in MAD_FIRST_STEPS.items():
        baseline = run_config("experiment=mad", f"task={name}")["task"]["datamodule"]
        assert baseline in by_task[name] and len(by_task[name]) == 2, name
        (other,) = [data for data in by_task[name] if data != baseline]
        assert {k for k in other if other[k] != baseline[k]} == {key}, name
        assert other[key] == harder, name


def test_mad_grid_is_its_headers() -> None:
    """The grid the sweep runs, 12 settings x 2 learning rates x 3 seeds for one mixer, is the
    one the header states."""
    params = compose_config("experiment=mad", hydra=True).hydra.sweeper.params
    assert [float(x) for x in params["optim.lr"].split(",")] == [1e-3, 2e-3]
    assert params["seed"] == "0,1,2" and "mixer" not in params  # the mixer is the user's
    header = (files("mixerlab.conf") / "experiment" / "mad.yaml").read_text()
    assert "the grid lr 1e-3, 2e-3" in header and "seeds 0, 1, 2" in header
    jobs = study_plan.expand([Command(("experiment=mad", "mixer=plugin", "mixer.name=conv"), True)])
    assert len(jobs) == 12 * 2 * 3
