"""Fuzzing the command line: every bad ``mixerlab train`` command line is one
clear message and exit 2, never a traceback, and valid ones compose; ``mixerlab compare`` and
``mixerlab bench`` parse their arguments the same way.

The overrides are generated from the real config tree (its keys, config groups and options):
known keys with wrong-typed, out-of-range or non-finite values, unknown keys near real ones, bad
group options, malformed override syntax, unicode and very long values. They go the way
``mixerlab train`` takes them up to the schema check, without training: :func:`check_overrides`,
Hydra's composition, :func:`validate_config`. A few whole command lines go through ``main`` in
process (training stubbed out), and a handful through the real ``mixerlab train``. Examples are
derandomized, so CI sees the same ones every time.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import yaml
from configs import compose_config, conf_options
from hydra import compose, initialize_config_module
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from run_folders import two_by_two

from mixerlab.experiments.cli import bench, train
from mixerlab.experiments.cli import compare as compare_cli
from mixerlab.experiments.cli._train_argv import check_overrides
from mixerlab.experiments.cli._train_errors import PREFIX, composition_error_message
from mixerlab.experiments.compare import outputs
from mixerlab.experiments.compare.plots import base
from mixerlab.experiments.run.schema import ConfigError, validate_config


def fuzz(max_examples: int) -> settings:
    """Hypothesis settings for CI: the same examples every time, however long each takes, and
    no shrinking (each example composes a config: shrinking a failure would take minutes; the
    report shows the failing command line as generated)."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow],
    )


# ------------------------------------------------------------------------ the real config tree
def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


DEFAULTS = dict(_leaves(OmegaConf.to_container(compose_config(), resolve=False)))
NODES = {key.rsplit(".", i)[0] for key in DEFAULTS for i in range(key.count(".") + 1)}
# Nodes whose keys are a `_target_`'s keyword arguments: building the run checks them.
FREE_FORM = ("optim.optimizer.", "optim.scheduler.", "model.ffn_hparams.", "callbacks.extra.")
CHECKED_KEYS = sorted(key for key in DEFAULTS if not key.startswith(FREE_FORM))
# Groups that conf/config.yaml's defaults list leaves null: `group=[]` there changes nothing.
OPTIONAL_GROUPS = tuple(
    group
    for entry in yaml.safe_load((files("mixerlab.conf") / "config.yaml").read_text())["defaults"]
    if isinstance(entry, dict)
    for group, option in entry.items()
    if option is None
)
# conf/hydra is Hydra's own settings, selected once by conf/config.yaml; conf/per_mixer is
# selected by the experiment and mixer chosen (conf/config.yaml's defaults), never by a user
GROUPS = {
    folder.name: conf_options(folder.name)
    for folder in files("mixerlab.conf").iterdir()
    if folder.is_dir() and folder.name not in ("hydra", "per_mixer", "__pycache__")
}

# What a careless or unlucky user types as a value: wrong types, out of range, non-finite.
BAD_VALUES = [
    *["nan", "inf", "-inf", "1e400", "-1e400", "1e-400", "-0.0", "-1", "0", "4294967296"],
    *["true", "null", "''", "[]", "{}", "[1,2]", "[nan]", "{a: 1}", "abc", "1.5", "9" * 40],
    *["${nope}", "${model}", "${model.d_model}", "'ünïcödé'", "'a b'", "[[1]]", "'x'" * 400],
]
values = st.one_of(
    st.sampled_from(BAD_VALUES),
    st.integers().map(str),
    st.floats().map(repr),
    st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=12),
)


@st.composite
def near_miss(draw: st.DrawFn, names: list[str]) -> str:
    """A name one edit away from a real one (a typo), that is not itself a real name."""
    name = draw(st.sampled_from(names))
    i = draw(st.integers(0, len(name) - 1))
    edit = draw(st.sampled_from(["drop", "double", "swap", "upper"]))
    typo = {
        "drop": name[:i] + name[i + 1 :],
        "double": name[:i] + name[i] + name[i:],
        "swap": name[:i] + name[i + 1 : i + 2] + name[i] + name[i + 2 :],
        "upper": name[:i] + name[i].upper() + name[i + 1 :],
    }[edit]
    return typo if typo and typo not in names else name + "x"


# Override syntax Hydra may choke on: the key-less, the doubled, the unbalanced, the unquoted.
MALFORMED = [
    *["=5", "==", "a==b", "+=1", "~", "+", "++", "model..d_model=1", ".model=1", "model.=1"],
    *["model.d_model=[1", "model.d_model=1]", "model.d_model={", "model.d_model='abc"],
    *["model.d_model", "mixer=", "mixer=null", "debug=null", "~mixer=3", "launcher=[null]"],
    *["mixer@=gmlp", "@model=x", "name=a=b", "optim.betas=[0.9,]", "é=1", "name=é", "\x00=1"],
    *["model.d_model=" + "9" * 5000, "name=" + "x" * 3000, "mixer=" + "m" * 300],
    *["task=[mqar,text]", "mixer=attention,null", "name=${nope}", "model.norm=${oops}"],
]
SYNTAX = "=[]{}(),'\"\\$:.~+@*? "
malformed = st.one_of(
    st.sampled_from(MALFORMED),
    st.text(st.sampled_from(SYNTAX + "abmodel_1"), max_size=16),
    st.text(max_size=12),  # any unicode
    st.builds("{}={}".format, st.sampled_from(CHECKED_KEYS), st.text(max_size=8)),
)


# ------------------------------------------------------------------- the path train takes
def outcome(overrides: list[str]) -> tuple[dict[str, Any] | None, str | None]:
    """(the validated config, None) or (None, the message ``mixerlab train`` prints) for
    ``mixerlab train *overrides``, up to the schema check; any other exception escapes."""
    try:
        check_overrides(overrides)
        with initialize_config_module(config_module="mixerlab.conf", version_base="1.3"):
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
        return validate_config(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])), None
    except ConfigError as err:
        return None, f"{PREFIX}{err}"
    except train.COMPOSITION_ERRORS as err:
        return None, composition_error_message(err)


def assert_clean(message: str, *names: str) -> None:
    """One short message (no traceback) naming one of ``names``: the offending key or value."""
    assert message.strip() and message.count(PREFIX) == 1, message
    assert "Traceback" not in message and "To append to your config" not in message, message
    assert len(message.splitlines()) <= 12 and len(message) <= 2000, message
    assert not names or any(name[:30] in message for name in names), (names, message)


# ------------------------------------------------------------------------------ the fuzzing
@fuzz(20)
@given(key=st.sampled_from(CHECKED_KEYS), value=values)
def test_a_known_key_with_any_value_is_a_config_or_one_message(key: str, value: str) -> None:
    _, message = outcome([f"{key}={value}"])
    if message is not None:
        assert_clean(message, key, value)


@fuzz(10)
@given(data=st.data())
def test_an_unknown_key_near_a_real_one_is_named(data: st.DataObject) -> None:
    parts = data.draw(st.sampled_from(CHECKED_KEYS)).split(".")
    depth = data.draw(st.integers(0, len(parts) - 1))
    level = sorted({n.split(".")[depth] for n in NODES | set(GROUPS) if n.count(".") >= depth})
    parts[depth] = data.draw(near_miss(level))
    override = f"{data.draw(st.sampled_from(['', '+']))}{'.'.join(parts)}=1"
    _, message = outcome([override])
    assert message is not None, f"{override} was accepted"
    assert_clean(message, ".".join(parts[: depth + 1]))


@fuzz(25)
@given(data=st.data())
def test_a_bad_group_option_names_the_group(data: st.DataObject) -> None:
    group = data.draw(st.sampled_from(sorted(GROUPS)))
    odd = ["null", "3", "1.5", "true", "''", "[null]", "[3]", "x" * 300, "'ü'", "[]", "{}"]
    option = data.draw(st.one_of(near_miss(GROUPS[group]), st.sampled_from(odd)))
    _, message = outcome([f"{group}={option}"])
    if option == ("[]" if group in OPTIONAL_GROUPS else "{}"):
        assert message is None, message  # no change at all: no option, no key
    else:
        assert message is not None, f"{group}={option} was accepted"
        assert_clean(message, group)


@fuzz(120)
@given(override=malformed)
def test_malformed_override_syntax_is_one_message(override: str) -> None:
    _, message = outcome([override])
    if message is not None:
        assert_clean(message)


@fuzz(8)
@given(
    d_model=st.integers(1, 4096),
    lr=st.floats(1e-6, 1.0),
    mixer=st.sampled_from([m for m in GROUPS["mixer"] if m != "plugin"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_valid_overrides_compose_into_the_config(
    d_model: int, lr: float, mixer: str, seed: int
) -> None:
    # 6 layers: every hybrid preset's pattern (1 to 3 entries) divides the depth
    overrides = [f"model.d_model={d_model}", f"optim.lr={lr!r}", f"mixer={mixer}", f"seed={seed}"]
    overrides.append("model.n_layers=6")
    config, message = outcome(overrides)
    assert message is None, message
    assert (config["model"]["d_model"], config["seed"]) == (d_model, seed)
    assert config["optim"]["lr"] == pytest.approx(lr)


# -------------------------------------------------------- whole command lines, in process
@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the in-process commands run: Hydra's run folders and bench output land there."""
    return tmp_path_factory.mktemp("cli_fuzz")


def run_main(main: Callable[[list[str]], int], argv: list[str], cwd: Path) -> tuple[int, str]:
    """(exit status, stderr) of ``main(argv)`` run in ``cwd``; argparse's exit is a status."""
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        mp.chdir(cwd)
        mp.setenv("WANDB_MODE", "disabled")
        mp.setattr(train, "train", lambda cfg, run_dir: None)  # everything up to training
        mp.setattr(base, "_REGISTRY", {})  # compare: tables, no plots
        mp.setattr(outputs, "metric_figures", lambda comparison: {})
        mp.setattr(bench, "BENCHMARKS", dict.fromkeys(bench.BENCHMARKS, lambda shape, args: {}))
        mp.setattr(bench, "TABLES", {})
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, err.getvalue()


def assert_exit_0_or_2(code: int, err: str) -> None:
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err, err
    assert code == 0 or err.strip(), "exit 2 without a message"


FLAGS = [[], ["--cfg", "job"], ["--cfg"], ["-c", "nope"], ["--info", "defaults"], ["--resolve"]]
FLAGS += [["-m", "--cfg", "job"], ["--help", "--resolve"], ["--config-name"], ["-cn", "nope"]]


@fuzz(8)
@given(
    flags=st.sampled_from(FLAGS),
    overrides=st.lists(
        st.one_of(malformed, st.builds("{}={}".format, st.sampled_from(CHECKED_KEYS), values)),
        max_size=3,
    ),
)
def test_train_main_exits_0_or_2_without_a_traceback(
    workdir: Path, flags: list[str], overrides: list[str]
) -> None:
    assert_exit_0_or_2(*run_main(train.main, [*flags, *overrides], workdir))


@pytest.fixture(scope="module")
def runs(workdir: Path) -> Path:
    two_by_two(workdir / "runs_to_compare")
    return workdir / "runs_to_compare"


WEIRD = ["", "nan", "-1", "é", "a,,b", "val/*", "mixer,mixer", "x" * 300, "--", "-"]
# the runs here are of no suite, so --write-reference is refused before it writes anything
COMPARE_FLAGS = ["--by", "--metric", "--also", "--mode", "--lr-key", "--best-over", "--x"]
COMPARE_FLAGS += ["--band", "--reference", "--write-reference", "--out", "--by"]


@fuzz(20)
@given(
    data=st.data(),
    words=st.lists(st.sampled_from([*COMPARE_FLAGS, "--metrc", "--bye", "--help"]), max_size=4),
)
def test_compare_arguments_are_a_report_or_one_message(
    runs: Path, data: st.DataObject, words: list[str]
) -> None:
    paths = data.draw(st.lists(st.sampled_from(["nope/", "é", "-x", str(runs)]), max_size=2))
    argv = [str(runs), *paths]
    for word in words:
        argv.append(word)
        argv.append(data.draw(st.one_of(st.sampled_from(WEIRD), st.text(max_size=6))))
    argv = [a.replace("\x00", "") for a in argv]
    if "--out" in argv:
        argv += ["--out", str(runs.parent / "comparison")]  # never write into the source tree
    assert_exit_0_or_2(*run_main(compare_cli.main, argv, runs.parent))


BENCH_OPTIONS = ["--steps", "--warmup", "--repeats", "--threads", "--d-model", "--lengths"]
BENCH_OPTIONS += ["--tokens", "--time-limit", "--min-time", "--device", "--dtype"]
BENCH_OPTIONS += ["--decode-tokens", "--mixers", "--memory-gb", "--stpes"]


@fuzz(25)
@given(
    names=st.lists(st.sampled_from([*bench.BENCHMARKS, "mixerz", ""]), max_size=2),
    options=st.lists(
        st.tuples(
            st.sampled_from(BENCH_OPTIONS),
            st.one_of(
                st.sampled_from([*WEIRD, "0", "1e400", "64,0", "inf"]), st.integers().map(str)
            ),
        ),
        max_size=3,
    ),
)
def test_bench_arguments_are_a_run_or_one_message(
    workdir: Path, names: list[str], options: list[tuple[str, str]]
) -> None:
    argv = [*names, *(f"{option}={value}" for option, value in options)]
    code, err = run_main(bench.main, argv, workdir)
    assert_exit_0_or_2(code, err)


# --------------------------------------------------------------- the real command, a handful
REAL_COMMAND_LINES = [
    "=5", "mixer=null", "model.d_model=[1", "model.dropout=" + "9" * 5000, "name=${nope}",
    "+optim.optimizer.foo=1",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("override", REAL_COMMAND_LINES, ids=lambda o: o[:24])
def test_the_real_command_exits_2_with_one_message(tmp_path: Path, override: str) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "mixerlab.experiments.cli", "train", "debug=default", override]
    done = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count(PREFIX) == 1, done.stderr
    assert not (tmp_path / "runs").exists()
