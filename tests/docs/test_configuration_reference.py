"""docs/configuration.md lists every config group and every option under ``conf/``, and no option
that is gone; each option's keys are named where a reader looks for them: a mixer's or a task's
in its own row, the other groups' in the group's section, the top-level keys in theirs."""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import yaml
from configs import conf_options

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
CONF = files("mixerlab.conf")
GROUPS = sorted(entry.name for entry in CONF.iterdir() if entry.is_dir() and any(
    child.name.endswith(".yaml") for child in entry.iterdir()
))  # fmt: skip
# Groups whose options set their own keys (the others are `# @package _global_` presets that
# set other groups' keys, or Hydra's own settings).
KEYED_GROUPS = ("mixer", "model", "task", "optim", "trainer", "logger", "callbacks")
ROW_KEYED_GROUPS = ("mixer", "task")  # each option's keys belong in its own row


def sections() -> dict[str, str]:
    """``{heading: text}`` of each ``## `` section; a group's heading starts with it in
    backticks (``## `mixer`: the token mixer``)."""
    parts = re.split(r"^## (.+)$", REFERENCE.read_text(), flags=re.MULTILINE)
    return {
        (match[1] if (match := re.match(r"`(\w+)`", heading)) else heading): text
        for heading, text in zip(parts[1::2], parts[2::2], strict=True)
    }


def rows(section: str, column: str = "option") -> dict[str, str]:
    """``{name: row}`` of the tables in a section whose first column is ``column``, the name
    being that column's text without its backticks."""
    found = {}
    for table in re.findall(r"(?:^\|.*\n?)+", section, re.MULTILINE):
        header, _, *lines = table.splitlines()
        if header.split("|")[1].strip() == column:
            found |= {line.split("|")[1].strip().strip("`"): line for line in lines}
    return found


def keys(node: Any) -> list[str]:
    """The keys a user sets in an option's YAML: every key, nested ones too, but none of
    Hydra's (``defaults``, ``_target_``) and not inside an instantiated ``_partial_`` spec,
    whose values read the plain keys beside it."""
    if not isinstance(node, dict) or not node or node.get("_partial_"):
        return []
    found = []
    for key, value in node.items():
        if key != "defaults" and not key.startswith("_"):
            found += [key, *keys(value)]
    return found


def option_keys(group: str, option: str) -> list[str]:
    """The keys an option sets: a task's are its DataModule's arguments; a mixer's ``name`` is
    its own or, for a preset, the mixer it sets, which its row says in words."""
    config = yaml.safe_load((CONF / group / f"{option}.yaml").read_text()) or {}
    if group == "task":
        return keys(config["datamodule"])
    return [key for key in keys(config) if (group, key) != ("mixer", "name")]


def named(key: str, text: str) -> bool:
    """Whether the text names the key in backticks, alone or dotted, or with its value."""
    return re.search(rf"`(?:[\w.]+\.)?{re.escape(key)}(?:`|=|:|\.)", text) is not None


def test_every_group_has_a_section() -> None:
    documented = set(sections()) - {"Composing a run", "Top-level keys"}
    assert documented == set(GROUPS)


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_a_group_is_listed(group: str) -> None:
    assert sorted(rows(sections()[group])) == conf_options(group)


@pytest.mark.parametrize("group", KEYED_GROUPS)
def test_every_key_of_an_option_is_named(group: str) -> None:
    section = sections()[group]
    missing = [
        f"{option}: {key}"
        for option in conf_options(group)
        for key in option_keys(group, option)
        if not named(key, rows(section)[option] if group in ROW_KEYED_GROUPS else section)
    ]
    assert not missing


def test_every_top_level_key_is_listed() -> None:
    config = yaml.safe_load((CONF / "config.yaml").read_text())
    top_level = [key for key in config if key != "defaults"]
    assert set(top_level) <= set(rows(sections()["Top-level keys"], column="key"))
