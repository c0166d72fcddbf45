"""The shipped Hydra configs compose and pass the schema; the schema rejects what it should."""

from __future__ import annotations

import pytest
from configs import compose_config, conf_options
from omegaconf import OmegaConf

from mixerlab.experiments.run.mixer_node import HYBRID
from mixerlab.experiments.run.schema import ConfigError, validate_config
from mixerlab.lightning_modules.tasks import available_tasks, get_task_class, task_arguments
from mixerlab.mixers import available_mixers, get_mixer_class, mixer_hparams, register_mixer

SHIPPED_MIXERS = [name for name in conf_options("mixer") if name != "plugin"]


@pytest.fixture(scope="module")
def base() -> dict:
    return OmegaConf.to_container(compose_config(), resolve=True)


@pytest.mark.parametrize(
    "override",
    [f"mixer={m}" for m in SHIPPED_MIXERS]
    + [f"task={t}" for t in conf_options("task")]
    + [f"experiment={e}" for e in conf_options("experiment")]
    + [f"trainer={t}" for t in conf_options("trainer")]
    + [f"logger={lg}" for lg in conf_options("logger")]
    + [f"sweep={s}" for s in conf_options("sweep")]
    + [f"debug={d}" for d in conf_options("debug")],
)
def test_every_shipped_option_composes_and_validates(override: str) -> None:
    group, option = override.split("=")
    node = OmegaConf.to_container(compose_config(override).mixer)
    # a hybrid preset's pattern must divide the depth: validate it at a depth it fits
    depth = [f"model.n_layers={len(node['pattern'])}"] if node["name"] == HYBRID else []
    cfg = validate_config(compose_config(override, *depth))
    if group == "mixer" and option in available_mixers():
        assert cfg["mixer"]["name"] == option
    elif group == "mixer":  # a preset: a registered mixer with other settings, or a hybrid
        assert cfg["mixer"]["name"] in [*available_mixers(), HYBRID]


@pytest.mark.parametrize("preset", [f"experiment={e}" for e in conf_options("experiment")])
def test_debug_cuts_every_preset_to_a_few_cpu_steps(preset: str) -> None:
    preset_trainer = validate_config(compose_config(preset))["trainer"]
    trainer = validate_config(compose_config(preset, "debug=default"))["trainer"]
    assert preset_trainer["max_steps"] > trainer["max_steps"] == 4  # not the preset's budget
    assert trainer["val_check_interval"] == 2 and trainer["accelerator"] == "cpu"
    # the command line still wins over the debug preset
    longer = validate_config(compose_config(preset, "debug=default", "trainer.max_steps=6"))
    assert longer["trainer"]["max_steps"] == 6


def test_default_config_is_the_main_job(base: dict) -> None:
    validate_config(base)
    assert base["task"]["name"] == "text" and base["mixer"]["name"] == "attention"
    assert base["logger"]["_target_"] == "pytorch_lightning.loggers.WandbLogger"
    assert base["logger"]["mode"] == "auto"


@pytest.mark.parametrize("name", [m for m in SHIPPED_MIXERS if m in available_mixers()])
def test_mixer_file_keys_are_the_mixer_hparams(name: str) -> None:
    node = OmegaConf.to_container(compose_config(f"mixer={name}").mixer)
    assert node.pop("name") == name
    node.pop("label", None)  # what runs are called by: a key of every mixer node, no hparam
    assert set(node) == set(mixer_hparams(name))


def test_every_builtin_mixer_has_a_conf_file() -> None:
    assert set(available_mixers()) >= {"attention", "rnn", "conv", "gmlp", "smlp"}
    assert {"attention", "rnn", "conv", "gmlp", "smlp"} <= set(SHIPPED_MIXERS)


def test_plugin_mixers_start_from_no_hparams() -> None:
    cfg = validate_config(compose_config("mixer=plugin", "mixer.name=conv", "+mixer.kernel_size=3"))
    assert cfg["mixer"] == {"name": "conv", "kernel_size": 3}
    with pytest.raises(ConfigError, match=r"mixer\.name"):
        validate_config(compose_config("mixer=plugin"))


def test_renaming_a_shipped_mixer_file_points_to_the_plugin_option() -> None:
    with pytest.raises(ConfigError, match=r"mixer=plugin mixer\.name=conv"):
        validate_config(compose_config("mixer=attention", "mixer.name=conv"))


def test_run_dirs_never_collide() -> None:
    hydra_cfg = OmegaConf.to_container(compose_config(hydra=True).hydra, resolve=False)
    assert "%f}" in hydra_cfg["run"]["dir"]  # microseconds
    assert "${hydra.job.num}" in hydra_cfg["sweep"]["subdir"]
    assert hydra_cfg["job"]["chdir"] is False


def _problems(base: dict, path: str, value) -> str:
    cfg = OmegaConf.create(base)
    OmegaConf.update(cfg, path, value, force_add=True)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    return str(info.value)


def test_unknown_key_names_it_and_lists_allowed(base: dict) -> None:
    msg = _problems(base, "model.d_modle", 64)
    assert "model.d_modle" in msg and "did you mean model.d_model?" in msg
    assert "n_layers" in msg and "tie_embeddings" in msg


def test_wrong_type_names_key_and_type(base: dict) -> None:
    msg = _problems(base, "trainer.max_steps", "many")
    assert "trainer.max_steps must be an integer" in msg and "'many'" in msg


def test_bad_choice_lists_choices(base: dict) -> None:
    msg = _problems(base, "model.norm", "batchnorm")
    assert "layernorm" in msg and "rmsnorm" in msg


def test_out_of_range_value(base: dict) -> None:
    assert "optim.min_lr_ratio must be in [0, 1]" in _problems(base, "optim.min_lr_ratio", 2.0)


def test_unknown_mixer_lists_registered_mixers(base: dict) -> None:
    msg = _problems(base, "mixer.name", "transformerxl")
    for name in available_mixers():
        assert name in msg


@pytest.mark.usefixtures("scratch_registries")
def test_decoder_only_mixer_on_an_encoder_task_is_refused() -> None:
    conv = get_mixer_class("conv")
    register_mixer("_test_decoder_only")(type("DecoderOnly", (conv,), {"supports_encoder": False}))
    encoder = compose_config("task=listops", "mixer=conv", "mixer.name=_test_decoder_only")
    with pytest.raises(ConfigError, match=r"'_test_decoder_only' is decoder-only .* 'listops'"):
        validate_config(encoder)
    decoder = compose_config("task=mqar", "mixer=conv", "mixer.name=_test_decoder_only")
    assert validate_config(decoder)["task"]["causal"] is True


def test_unknown_mixer_hparam_lists_accepted_ones(base: dict) -> None:
    msg = _problems(base, "mixer.n_head", 2)
    assert "mixer.n_head" in msg and "did you mean mixer.n_heads?" in msg
    for key in mixer_hparams("attention"):
        assert key in msg


def test_mixer_hparam_type_follows_its_default(base: dict) -> None:
    assert "mixer.n_heads must be an integer" in _problems(base, "mixer.n_heads", "four")


def test_logger_is_wandb_or_nothing_beside_metrics_csv(base: dict) -> None:
    assert "logger.mode='sometimes'" in _problems(base, "logger.mode", "sometimes")
    assert "logger.projetc is not a known key" in _problems(base, "logger.projetc", "x")
    with pytest.raises(ConfigError, match=r"logger\._target_ is missing"):
        validate_config(dict(base, logger={"project": "x"}))
    for option in ("csv", "none"):
        assert validate_config(compose_config(f"logger={option}"))["logger"] == {}


def test_optimiser_and_scheduler_specs_follow_the_plain_optim_keys() -> None:
    optim = validate_config(
        compose_config("optim.lr=0.02", "optim.betas=[0.8,0.9]", "optim.weight_decay=0.3",
                 "optim.warmup_steps=7", "optim.min_lr_ratio=0.2", "trainer.max_steps=70")
    )["optim"]  # fmt: skip
    assert optim["optimizer"] == {
        "_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.02,
        "weight_decay": 0.3, "betas": [0.8, 0.9],
    }  # fmt: skip
    schedule = optim["scheduler"]["lr_lambda"]
    assert schedule["warmup_steps"] == 7 and schedule["min_ratio"] == 0.2
    assert schedule["total_steps"] == 70
    no_target = {**optim, "optimizer": {"lr": 1.0}}
    with pytest.raises(ConfigError, match=r"optim\.optimizer needs _target_"):
        validate_config(dict(validate_config(compose_config()), optim=no_target))


def test_checkpoint_callback_is_a_target_spec(base: dict) -> None:
    assert base["callbacks"]["checkpoint"]["_target_"].endswith("ModelCheckpoint")
    msg = _problems(base, "callbacks.checkpoint.save_lats", True)
    assert "did you mean callbacks.checkpoint.save_last?" in msg


def test_datamodule_must_not_set_what_the_run_sets(base: dict) -> None:
    assert "task.datamodule.seed is set by the run" in _problems(base, "task.datamodule.seed", 3)


@pytest.mark.parametrize("name", conf_options("task"))
def test_task_type_and_causality_come_from_the_registration(name: str) -> None:
    cls = get_task_class(name)
    task = validate_config(compose_config(f"task={name}"))["task"]
    assert (task["name"], task["type"], task["causal"]) == (name, cls.task_type, cls.causal)
    assert (
        validate_config(compose_config(f"task={name}"))["task"] == task
    )  # validating again agrees


def test_unknown_task_lists_registered_tasks(base: dict) -> None:
    msg = _problems(base, "task.name", "wikitext")
    assert "task.name='wikitext' is not a registered task" in msg
    for name in available_tasks():
        assert name in msg


def test_unknown_datamodule_key_lists_the_task_arguments(base: dict) -> None:
    msg = _problems(base, "task.datamodule.seq_lenn", 64)
    assert "task.datamodule.seq_lenn" in msg and "did you mean task.datamodule.seq_len?" in msg
    for key in task_arguments("text"):
        assert key in msg


def test_datamodule_value_type_follows_its_default(base: dict) -> None:
    msg = _problems(base, "task.datamodule.seq_len", "long")
    assert "task.datamodule.seq_len must be an integer like its default" in msg


def test_task_type_contradicting_the_registration_is_refused(base: dict) -> None:
    msg = _problems(base, "task.causal", False)
    assert "task.causal=False contradicts task 'text', registered with causal=True" in msg
    assert "task.description is not a known key" in _problems(base, "task.description", "x")


def test_all_problems_are_reported_at_once(base: dict) -> None:
    cfg = OmegaConf.create(base)
    cfg.model.d_model = "wide"
    cfg.optim.lr = -1.0
    with pytest.raises(ConfigError, match=r"2 problems") as info:
        validate_config(cfg)
    assert "model.d_model" in str(info.value) and "optim.lr" in str(info.value)


def test_missing_value_is_reported(base: dict) -> None:
    cfg = OmegaConf.create(base)
    cfg.name = "???"
    with pytest.raises(
        ConfigError, match=r"name is not set \(\?\?\? in the config\); set it with name="
    ):
        validate_config(cfg)


def test_plugin_mixer_without_a_name_says_how_to_name_one() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(compose_config("mixer=plugin"))
    assert "mixer.name is not set" in str(info.value)
    assert "name it with mixer.name=<registered name>" in str(info.value)
    assert f"(registered mixers: {', '.join(available_mixers())})" in str(info.value)


def test_values_that_would_fail_at_run_time_are_rejected(base: dict, tmp_path) -> None:
    assert "seed must be in [0, 4294967295]" in _problems(base, "seed", 2**32)
    missing = str(tmp_path / "nope.ckpt")
    assert f"ckpt_path={missing!r}: no such checkpoint file" in _problems(
        base, "ckpt_path", missing
    )
    (tmp_path / "last.ckpt").write_bytes(b"")
    for fine in (str(tmp_path / "last.ckpt"), "last", "s3://bucket/run/last.ckpt"):
        validate_config(dict(base, ckpt_path=fine))
