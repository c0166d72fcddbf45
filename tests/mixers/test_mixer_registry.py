"""The mixer registry: clear errors on bad names and hyper-parameters, and entry-point plugins."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import Tensor

from mixerlab.mixers._contract import (
    ENTRY_POINT_GROUP,
    MIXERS,
    TokenMixer,
    available_mixers,
    build_mixer,
    describe_mixer,
    get_mixer_class,
    mixer_hparams,
    register_mixer,
)


class Scale(TokenMixer):
    """Scales every position: a pointwise stand-in for a real mixer.

    The registry does not care what a mixer computes, only how it is declared.
    """

    def __init__(
        self,
        d_model: int,
        *,
        causal: bool = True,
        max_len: int | None = None,
        factor: float = 2.0,
        bias: bool = False,
    ) -> None:
        super().__init__(d_model, causal=causal, max_len=max_len)
        self.factor = factor

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        self.check_input(x, mask)
        return self.factor * x


class PositionTable(Scale):
    """Learns a weight per position, so it needs max_len."""

    requires_max_len = True


class CausalScale(Scale):
    """Declared decoder-only."""

    supports_encoder = False


@pytest.fixture(autouse=True)
def test_mixers(scratch_registries: None) -> None:
    """Every test here sees three test mixers; the shared fixture removes them afterwards."""
    register_mixer("_test_scale")(Scale)
    register_mixer("_test_position_table")(PositionTable)
    register_mixer("_test_causal_scale")(CausalScale)


def test_build_by_name_passes_hparams() -> None:
    mixer = build_mixer("_test_scale", 8, causal=False, max_len=16, factor=3.0)
    assert isinstance(mixer, Scale)
    assert (mixer.d_model, mixer.causal, mixer.max_len, mixer.factor) == (8, False, 16, 3.0)
    assert torch.equal(mixer(torch.ones(1, 2, 8)), torch.full((1, 2, 8), 3.0))


def test_unknown_mixer_lists_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown mixer 'nope'; known mixers: .*_test_scale"):
        build_mixer("nope", 8)
    with pytest.raises(ValueError, match=r"_test_position_table"):
        get_mixer_class("nope")


def test_unknown_hparam_lists_accepted_ones() -> None:
    with pytest.raises(
        ValueError,
        match=r"mixer '_test_scale' got unknown hyper-parameter\(s\) size, width; "
        r"it accepts: bias, factor",
    ):
        build_mixer("_test_scale", 8, width=2, size=1)


def test_hparams_and_description() -> None:
    assert mixer_hparams("_test_scale") == {"factor": 2.0, "bias": False}
    assert (
        describe_mixer("_test_scale")
        == "Scales every position: a pointwise stand-in for a real mixer."
    )


@pytest.mark.parametrize("max_len", [None, 0])
def test_mixer_that_needs_max_len_says_so(max_len: int | None) -> None:
    with pytest.raises(ValueError, match=r"PositionTable .* needs a positive max_len, got"):
        build_mixer("_test_position_table", 8, max_len=max_len)
    assert build_mixer("_test_position_table", 8, max_len=4).max_len == 4


def test_decoder_only_mixer_refuses_to_build_as_an_encoder() -> None:
    with pytest.raises(
        ValueError,
        match=r"^mixer '_test_causal_scale' is decoder-only \(supports_encoder = False\) and "
        r"cannot be built with causal=False",
    ):
        build_mixer("_test_causal_scale", 8, causal=False)
    assert build_mixer("_test_causal_scale", 8).causal


def test_input_longer_than_max_len_names_both_lengths() -> None:
    mixer = build_mixer("_test_scale", 8, max_len=4)
    with pytest.raises(ValueError, match=r"sequence length 5 is longer than Scale's max_len 4"):
        mixer(torch.zeros(1, 5, 8))


def test_duplicate_name_for_another_class_raises() -> None:
    class Impostor(Scale):
        pass

    with pytest.raises(ValueError, match=r"'_test_scale' is already registered to .*\.Scale"):
        register_mixer("_test_scale")(Impostor)
    assert get_mixer_class("_test_scale") is Scale


def test_registering_the_same_class_again_is_harmless() -> None:
    assert register_mixer("_test_scale")(Scale) is Scale
    assert available_mixers().count("_test_scale") == 1


def test_only_token_mixers_register() -> None:
    with pytest.raises(TypeError, match="needs a TokenMixer subclass"):
        register_mixer("_test_linear")(torch.nn.Linear)


PLUGIN_MODULE = '''
from __future__ import annotations

from mixerlab.mixers import TokenMixer, register_mixer


class Identity(TokenMixer):
    """Returns its input: registered as a class entry point."""

    def forward(self, x, mask=None):
        self.check_input(x, mask)
        return x


@register_mixer("_test_plugin_module")
class Negate(Identity):
    """Negates its input: registered when the entry point imports this module."""

    def forward(self, x, mask=None):
        return -super().forward(x, mask)
'''


def test_entry_point_plugins_register(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "_test_mixer_plugin.py").write_text(PLUGIN_MODULE)
    dist_info = tmp_path / "test_mixer_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: test-mixer-plugin\nVersion: 0.1\n"
    )
    (dist_info / "entry_points.txt").write_text(
        textwrap.dedent(
            f"""\
            [{ENTRY_POINT_GROUP}]
            _test_plugin_module = _test_mixer_plugin
            _test_plugin_class = _test_mixer_plugin:Identity
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(MIXERS, "plugins_loaded", False)

    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    assert {"_test_plugin_module", "_test_plugin_class"} <= set(found.names)
    try:
        names = available_mixers()
        assert {"_test_plugin_module", "_test_plugin_class", "_test_scale"} <= set(names)
        x = torch.randn(2, 3, 4)
        assert torch.equal(build_mixer("_test_plugin_class", 4)(x), x)
        assert torch.equal(build_mixer("_test_plugin_module", 4, max_len=3)(x), -x)
        assert describe_mixer("_test_plugin_class") == (
            "Returns its input: registered as a class entry point."
        )
    finally:
        sys.modules.pop("_test_mixer_plugin", None)


def test_broken_plugin_is_named_and_not_skipped_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist_info = tmp_path / "broken_mixer_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: broken-mixer-plugin\nVersion: 0.1\n"
    )
    (dist_info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n_test_broken = _no_such_mixer_module\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(MIXERS, "plugins_loaded", False)
    for _ in range(2):  # raised again on the next call, not silently skipped
        with pytest.raises(ImportError, match=r"'_test_broken'.*uninstall"):
            available_mixers()


def test_scratch_registry_is_restored() -> None:
    assert not any(name.startswith("_test_plugin") for name in available_mixers())
