"""The README's mixer example is real code: it registers, builds and passes the contract."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mixers import build_mixer
from mixers.testing import check_mixer

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_mixer_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    (example,) = [block for block in blocks if "@register_mixer" in block]
    return example


@pytest.mark.usefixtures("scratch_registries")
def test_readme_mixer_example_passes_the_contract() -> None:
    namespace: dict = {}
    exec(compile(readme_mixer_example(), str(README), "exec"), namespace)
    mixer_cls = namespace["CumulativeMean"]
    assert type(build_mixer("cummean", d_model=8)) is mixer_cls
    check_mixer(mixer_cls)
