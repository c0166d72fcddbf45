"""The W&B side of a comparison in one command: a report for a sweep's runs.

mixerlab dashboard PATH... [--metric NAME] [--by KEY] [--title TEXT] [--dry-run]

It reads the same run folders as ``mixerlab compare`` and plans a W&B report: the comparison's
summary table, then one section per validation set (and one for training and one for throughput)
with a line plot per logged metric against the training step, runs grouped by mixer with the
seed spread as a band, and the runs table below. Online (``wandb login`` done, or
``WANDB_API_KEY`` set) it saves the report with the ``wandb-workspaces`` library
(``pip install 'mixerlab[dashboard]'``) and prints its URL; offline it prints the plan and what
to do to build it, since a report can only show runs the W&B server has.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixerlab.experiments.compare.aggregate import build_comparison
from mixerlab.experiments.compare.outputs import render_markdown
from mixerlab.experiments.compare.runs import Run, load_runs, lookup
from mixerlab.experiments.run.wandb_mode import wandb_mode

COMMAND = "dashboard"
HELP = "a W&B report of the same runs (online; offline it prints the plan)"

STEP = "trainer/global_step"  # the x axis Lightning's WandbLogger logs every metric against
GROUP_KEY = "mixer_label"  # logged with each run's config: a mixer's name or a hybrid's label


@dataclass(frozen=True)
class DashboardPlan:
    """What the report holds; built from local run folders, rendered as text or saved to W&B."""

    title: str
    entity: str | None
    project: str
    groups: tuple[str, ...]  # W&B run groups (sweep names) the report's runs come from
    sections: tuple[tuple[str, tuple[str, ...]], ...]  # (section, metrics), in order
    summary: str  # the comparison table, as markdown
    offline_runs: tuple[Path, ...]  # W&B run folders that were never synced

    def describe(self) -> str:
        where = f"{self.entity or '<your default entity>'}/{self.project}"
        lines = [
            f"W&B report {self.title!r} in {where}",
            f"  runs: group in {list(self.groups)}, grouped by config {GROUP_KEY} "
            "(mean line, min-max band over seeds)",
            "  summary table: the comparison below, and the runs table with every metric",
        ]
        for section, metrics in self.sections:
            lines.append(f"  section {section!r}: {', '.join(metrics)} against {STEP}")
        return "\n".join(lines)


def _section(metric: str) -> str:
    if metric.startswith("val/"):
        _, _, val_set = metric.partition("@")
        return f"validation: {val_set}" if val_set else "validation"
    if metric.startswith("train/device/") or metric.endswith("tokens_per_s"):
        return "throughput"
    return "training"


def plan_dashboard(runs: Sequence[Run], metric: str, by: str, title: str | None) -> DashboardPlan:
    """The report for ``runs``: every metric they logged, placed by what it measures."""
    loggers = [lookup(run.results, "logger") or {} for run in runs]
    if not any(loggers):
        raise ValueError(
            "these runs were not logged to W&B (logger=csv or none); train with logger=wandb "
            "to get a dashboard, or use mixerlab compare for tables and plots"
        )
    projects = sorted({lg.get("project") for lg in loggers if lg})
    if len(projects) > 1:
        raise ValueError(f"the runs were logged to several W&B projects {projects}: pass one")
    comparison = build_comparison(runs, [by], metric, None)
    metrics = sorted({name for run in runs for name in run.results.get("metrics") or {}})
    sections: dict[str, list[str]] = {}
    for name in metrics:
        sections.setdefault(_section(name), []).append(name)
    order = sorted(sections, key=lambda s: (not s.startswith("validation"), s != "training", s))
    groups = tuple(sorted({str(lg.get("group")) for lg in loggers}))
    offline = sorted({p for run in runs for p in (run.dir / "wandb").glob("offline-run-*")})
    return DashboardPlan(
        title=title or f"{', '.join(groups)}: {metric} by {by}",
        entity=next((lg.get("entity") for lg in loggers if lg.get("entity")), None),
        project=projects[0],
        groups=groups,
        sections=tuple((s, tuple(sections[s])) for s in order),
        summary=render_markdown(comparison, ()),
        offline_runs=tuple(offline),
    )


def build_report(plan: DashboardPlan) -> Any:
    """The plan as a ``wandb_workspaces`` report object (saved by the caller)."""
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError:
        raise ValueError(
            "building the W&B report needs wandb-workspaces: pip install 'mixerlab[dashboard]'"
        ) from None
    names = ", ".join(f"'{group}'" for group in plan.groups)
    runset = wr.Runset(
        entity=plan.entity or "", project=plan.project, filters=f"Group in [{names}]"
    )
    blocks: list[Any] = [wr.MarkdownBlock(text=plan.summary)]
    for section, metrics in plan.sections:
        panels = [
            wr.LinePlot(
                title=metric,
                x=STEP,
                y=[metric],
                groupby=wr.Config(GROUP_KEY),
                groupby_aggfunc="mean",
                groupby_rangefunc="minmax",
            )
            for metric in metrics
        ]
        blocks += [wr.H2(text=section), wr.PanelGrid(runsets=[runset], panels=panels)]
    kwargs = {"entity": plan.entity} if plan.entity else {}
    return wr.Report(project=plan.project, title=plan.title[:128], blocks=blocks, **kwargs)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixerlab dashboard", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="run folders")
    parser.add_argument("--metric", default="val/loss", help="the summary table's metric")
    parser.add_argument("--by", default="mixer", help="the summary table's grouping key")
    parser.add_argument("--title", help="report title (default: the sweep names and metric)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan, build nothing, even when online"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """0 when the report was saved or its plan printed, 1 when saving failed, 2 on bad input."""
    args = _parser().parse_args(argv)
    try:
        plan = plan_dashboard(load_runs(args.paths), args.metric, args.by, args.title)
    except ValueError as err:
        print(f"mixerlab dashboard: error: {err}", file=sys.stderr)
        return 2
    print(plan.describe())
    if args.dry_run:
        return 0
    if wandb_mode("auto") != "online":
        sync = f" (wandb sync {' '.join(map(str, plan.offline_runs))})" * bool(plan.offline_runs)
        print(
            "\nW&B is offline here (no WANDB_API_KEY, no `wandb login`), so nothing was built. "
            f"To build it: wandb login, then upload the runs{sync}, and run this command again."
        )
        return 0
    try:
        report = build_report(plan)
        report.save()
    except ValueError as err:
        print(f"mixerlab dashboard: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the W&B API: network, permissions, a missing project
        print(f"mixerlab dashboard: saving the report failed: {err}", file=sys.stderr)
        return 1
    print(f"\nreport saved: {report.url}")
    return 0
