"""The comparison in the terminal: rich tables, the lr selection, runs left out (unfinished or
unreadable), warnings."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from experiments.compare.aggregate import Comparison
from experiments.compare.runs import RESULTS
from experiments.compare.tables import (
    caption,
    chance_notes,
    lr_notes,
    scope_line,
    table_rows,
    title,
    unfinished_rows,
    unreadable_rows,
)


def _print_left_out(
    console: Console, heading: str, header: list[str], rows: list[list[str]]
) -> None:
    """A table of runs left out, its first two columns in red (the run and what is wrong); cells
    are plain text, so brackets in a path or an error are never read as markup."""
    table = Table(title=heading)
    for index, name in enumerate(header):
        table.add_column(name, style="red" if index < 2 else None)
    for row in rows:
        table.add_row(*map(Text, row))
    console.print(table)


def print_report(comparison: Comparison, console: Console) -> None:
    """The rich tables and notes in the terminal."""
    header, rows = table_rows(comparison)
    table = Table(
        title=f"{title(comparison)}\n{scope_line(comparison)}",
        caption=caption(comparison),
        caption_justify="left",
    )
    for index, name in enumerate(header):
        if name in comparison.by:  # group names are never cut, the number columns wrap instead
            width = max([len(name), *(len(row[index]) for row in rows)])
            table.add_column(name, no_wrap=True, min_width=width)
        else:
            table.add_column(name, justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if notes := chance_notes(comparison):
        console.print("[bold]chance levels[/]")
        for note in notes:
            console.print(f"  {note}", markup=False, highlight=False)
    for note in lr_notes(comparison):
        console.print(f"[bold]lr selection[/] {note}", highlight=False)
    if comparison.unfinished:
        heading = "failed and unfinished runs (not in the table above)"
        _print_left_out(console, heading, *unfinished_rows(comparison))
    if comparison.unreadable:
        heading = f"unreadable runs (left out: fix or delete their {RESULTS})"
        _print_left_out(console, heading, *unreadable_rows(comparison))
    for warning in comparison.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
