"""``mixerlab new-mixer NAME``: write a plugin package holding a working mixer to start from.

The package is what a plugin needs and nothing else: ``pyproject.toml`` with the
``mixerlab.mixers`` entry point, a module with a small mixer that passes the whole contract (a
gated running mean: keyword-only hyper-parameters with defaults, ``check_input``, ``step`` and
``init_state``, ``flops_per_token``, the class attributes a mixer may declare), a test that runs
``check_mixer`` on it by its registered name, and a README that says how to install, test, train
and sweep it with the built-in mixers.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from string import Template

from mixerlab.mixers import available_mixers, get_mixer_class

COMMAND = "new-mixer"
HELP = "write a plugin package with a working mixer to start from"

NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "mixerlab-$name"
version = "0.1.0"
description = "The $name token mixer, a mixerlab plugin"
requires-python = ">=3.10"
dependencies = ["mixerlab"]

[project.optional-dependencies]
test = ["pytest>=8"]

# mixerlab finds the mixer through this group; the key is the name configs use
# (mixer=plugin mixer.name=$name). The value is the module, whose @register_mixer runs on import.
[project.entry-points."mixerlab.mixers"]
$name = "$package.$name"

[tool.setuptools]
packages = ["$package"]
"""

PACKAGE_INIT = '''\
"""The `$name` token mixer for mixerlab, registered through the `mixerlab.mixers` entry point."""
'''

MIXER = '''\
"""$class_name: a gated running mean, the starting point of the `$name` token mixer.

    value, gate = in_proj(x).chunk(2)       # (B, L, d_model) each
    causal=True:  mean_t = mean(value_1 .. value_t)   over real positions up to t
    causal=False: mean_t = mean(value_1 .. value_n)   over every real position
    y_t = out_proj(mean_t * silu(gate_t))

Replace the mixing in ``forward`` and ``step``; ``tests/test_$name.py`` runs mixerlab's whole
contract on it and names the rule a change breaks.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from mixerlab import TokenMixer, register_mixer
from torch import Tensor, nn


@register_mixer("$name")
class $class_name(TokenMixer):
    """Gated running mean of a projection (the `$name` plugin's starting point)."""

    # step() decodes one token at a time; the contract checks it equals forward.
    supports_step = True
    # False makes it decoder-only: causal=False (encoder tasks) then refuses to build it.
    supports_encoder = True
    # Parameter names (globs, e.g. "A_log") that the optimiser must not decay; every other
    # matrix takes the run's weight decay (vectors such as biases never do).
    no_weight_decay: tuple[str, ...] = ()

    def __init__(
        self,
        d_model: int,
        *,
        causal: bool = True,
        max_len: int | None = None,
        bias: bool = True,
    ) -> None:
        # Hyper-parameters are keyword-only with defaults: configs set them by name
        # (+mixer.bias=false); causal and max_len come from the task.
        super().__init__(d_model, causal=causal, max_len=max_len)
        self.in_proj = nn.Linear(d_model, 2 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        # The model keeps whatever init the mixer sets here (PyTorch's defaults for now).

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        self.check_input(x, mask)  # shape, max_len and mask, with messages naming them
        value, gate = self.in_proj(x).chunk(2, dim=-1)
        weight = x.new_ones(x.shape[:2]) if mask is None else mask.to(x.dtype)
        weight = weight[..., None]  # (B, L, 1), 0 at padding: padding never mixes in
        value = value * weight
        if self.causal:
            mean = value.cumsum(1) / weight.cumsum(1).clamp_min(1)
        else:
            count = weight.sum(1, keepdim=True).clamp_min(1)  # a row may be all padding
            mean = (value.sum(1, keepdim=True) / count).expand_as(value)
        return self.out_proj(mean * F.silu(gate))

    def init_state(self, batch_size: int) -> dict[str, Any]:
        zeros = self.out_proj.weight.new_zeros(batch_size, self.d_model)
        return {"sum": zeros, "position": 0}

    def step(self, x_t: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        self.check_step(state["position"])  # refuses encoders and stepping past max_len
        value, gate = self.in_proj(x_t).chunk(2, dim=-1)
        total, position = state["sum"] + value, state["position"] + 1
        y_t = self.out_proj(total / position * F.silu(gate))
        return y_t, {"sum": total, "position": position}

    def flops_per_token(self, seq_len: int) -> float:
        # in_proj and out_proj: 3 d_model^2 multiply-adds; the mean and the gate: ~4 d_model
        return 2.0 * 3 * self.d_model**2 + 4.0 * self.d_model
'''

TEST = '''\
"""The `$name` mixer against mixerlab's whole token-mixer contract, in both modes."""

from mixerlab import check_mixer


def test_${name}_passes_the_contract() -> None:
    # By its registered name: this also checks that the installed entry point finds it.
    # `pytest -s` prints which checks ran and which were skipped, and why.
    check_mixer("$name", verbose=True)


def test_${name}_passes_the_contract_without_bias() -> None:
    check_mixer("$name", hparams={"bias": False})
'''

README = """\
# mixerlab-$name

The `$name` token mixer as a mixerlab plugin.
`$package/$name.py` holds the mixer (a gated running mean to start from: replace the mixing);
`pyproject.toml` registers it in the `mixerlab.mixers` entry-point group, so installing the
package is all mixerlab needs.

## Install, editable, into the environment that has mixerlab

```bash
pip install -e ".[test]"   # e.g. /path/to/mixerlab/.venv/bin/pip install -e ".[test]"
mixerlab list              # `$name` is among the mixers
```

## Test

```bash
pytest -s tests/           # check_mixer: the whole contract in both modes, with its report
```

## Train and sweep

```bash
mixerlab train mixer=plugin mixer.name=$name
mixerlab train mixer=plugin mixer.name=$name +mixer.bias=false      # a hyper-parameter
mixerlab train -m mixer=plugin mixer.name=attention,conv,$name      # with the built-ins
mixerlab compare runs/multirun/<the sweep's folder>
```

`mixer=plugin` takes any registered mixer by name, built-in ones included, so one sweep
compares the plugin with them under identical conditions.

## What to know when editing

- Hyper-parameters are keyword-only arguments with defaults (`bias` here); a config sets them
  as `+mixer.<name>=<value>`, and an unknown one is an error that lists the accepted ones.
- The model initialises its embeddings, channel mixers and head (GPT-2 style) and leaves the
  mixer's parameters as its `__init__` set them.
- `supports_step`, `supports_encoder` (False: decoder-only, encoder tasks refuse it) and
  `no_weight_decay` (parameter names the optimiser must not decay) are class attributes.
- `flops_per_token(seq_len)` feeds the FLOPs columns of `mixerlab compare`.
"""


def class_name_for(name: str) -> str:
    """``my_mixer`` -> ``MyMixer``, ``rwkv`` -> ``RwkvMixer``."""
    camel = "".join(part[:1].upper() + part[1:] for part in name.split("_"))
    return camel if camel.endswith("Mixer") else f"{camel}Mixer"


def check_name(name: str, folder: Path) -> None:
    """Raise a ValueError naming the problem when ``name`` or ``folder`` cannot be used."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"mixer name {name!r} must start with a letter and hold only letters, digits and "
            "underscores (it becomes a module name), e.g. my_mixer"
        )
    if name in available_mixers():
        module = get_mixer_class(name).__module__
        raise ValueError(
            f"a mixer named {name!r} is already registered (by {module}); pick another"
        )
    if folder.exists():
        raise ValueError(f"{folder} already exists; pass another --dir or remove it")


def write_plugin(name: str, folder: Path) -> list[Path]:
    """Write the plugin package for mixer ``name`` into the new ``folder``; the files written."""
    check_name(name, folder)
    package = f"mixerlab_{name}"
    fields = {"name": name, "package": package, "class_name": class_name_for(name)}
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{package}/__init__.py": PACKAGE_INIT,
        f"{package}/{name}.py": MIXER,
        f"tests/test_{name}.py": TEST,
    }
    written = []
    for relative, template in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(template).substitute(fields))
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """0 when written, 2 on a bad name or an existing folder."""
    parser = argparse.ArgumentParser(
        prog="mixerlab new-mixer",
        description="Write a plugin package with a working mixer to start from.",
    )
    parser.add_argument("name", metavar="NAME", help="the mixer's registered name: my_mixer")
    parser.add_argument(
        "--dir",
        type=Path,
        metavar="DIR",
        help="the folder to create (default: ./mixerlab-NAME); it must not exist",
    )
    args = parser.parse_args(argv)
    folder = args.dir or Path(f"mixerlab-{args.name}")
    try:
        written = write_plugin(args.name, folder)
    except ValueError as err:
        print(f"mixerlab new-mixer: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} files into {folder}:")
    for path in written:
        print(f"  {path.relative_to(folder)}")
    print(
        f"\nnext: pip install -e {folder}, then pytest -s {folder / 'tests'}\n"
        f"train: mixerlab train mixer=plugin mixer.name={args.name}\n"
        f"sweep: mixerlab train -m mixer=plugin mixer.name=attention,conv,{args.name}"
    )
    return 0
