"""The mixer contract over every registered mixer (built-ins and installed plugins), both modes.

One test per (mixer, mode, check), so a failure reads like ``conv-causal-padding``. A new mixer
is covered by being registered; ``mixerlab.mixers.testing`` holds the checks and their messages.
"""

from __future__ import annotations

import inspect

import pytest

from mixerlab.mixers import (
    TokenMixer,
    available_mixers,
    describe_mixer,
    get_mixer_class,
    mixer_hparams,
)
from mixerlab.mixers.testing import CHECKS

# The mixers shipped in the package (plugins live in other packages): found, not listed.
BUILT_IN = [
    name
    for name in available_mixers()
    if get_mixer_class(name).__module__.startswith("mixerlab.mixers.")
]
MODES = [pytest.param(True, id="causal"), pytest.param(False, id="encoder")]


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("causal", MODES)
@pytest.mark.parametrize("name", available_mixers())
def test_contract(name: str, causal: bool, check: str) -> None:
    contract_check = CHECKS[check]
    reason = contract_check.skip_reason(get_mixer_class(name), causal)
    if reason:
        pytest.skip(f"{check}: {reason}")  # a decoder-only mixer skips the encoder mode here
    contract_check(name, causal=causal)


@pytest.mark.parametrize("name", available_mixers())
def test_declaration(name: str) -> None:
    """A one-line description for `mixerlab list`, and a default for every hyper-parameter."""
    assert describe_mixer(name), f"{name}: the class needs a docstring (its first line is shown)"
    missing = [
        key for key, default in mixer_hparams(name).items() if default is inspect.Parameter.empty
    ]
    assert not missing, f"{name}: hyper-parameter(s) {missing} need defaults"


def test_every_module_of_the_package_that_registers_is_found() -> None:
    """Each mixer file registers what it defines: no built-in depends on a hand-written import."""
    assert len(BUILT_IN) >= 10  # the filter above finds the package's own mixers
    modules = {get_mixer_class(name).__module__ for name in BUILT_IN}
    # one file per mixer, same name, at the top of mixers/
    assert modules == {f"mixerlab.mixers.{name}" for name in BUILT_IN}


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_hparams_are_keyword_only_with_defaults(name: str) -> None:
    cls = get_mixer_class(name)
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]
    assert params and all(p.kind is p.KEYWORD_ONLY for p in params)
    assert all(p.default is not p.empty for p in params)
    assert describe_mixer(name) == inspect.getdoc(cls).splitlines()[0]


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_mixers_decode_step_by_step(name: str) -> None:
    assert get_mixer_class(name).supports_step, f"{name}: causal built-ins must decode step by step"


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_mixers_report_their_state_size(name: str) -> None:
    """Comparisons show state size next to params and FLOPs: every built-in reports it."""
    assert get_mixer_class(name).state_size is not TokenMixer.state_size, name
