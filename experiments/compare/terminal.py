"""The comparison in the terminal: rich tables, the grid point kept, runs left out (unfinished or
unreadable), warnings."""

from __future__ import annotations

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from mixerlab.experiments.compare.comparison import Comparison
from mixerlab.experiments.compare.suite_cells import (
    suite_caption,
    suite_heading,
    suite_notes,
    suite_rows,
)
from mixerlab.experiments.compare.tables import (
    caption,
    chance_notes,
    compute_lines,
    scope_line,
    selection_heading,
    selection_notes,
    table_rows,
    title,
    unfinished_rows,
    unreadable_rows,
)
from mixerlab.lightning_modules.record import RESULTS_FILE


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


def _column_width(name: str, cells: list[str], wraps: bool) -> int:
    """The narrowest a column can be without cutting a word: cells and header wrap at spaces,
    unless the column does not wrap at all (group names)."""
    texts = (name, *cells)
    return max(len(part) for text in texts for part in (text.split() if wraps else [text]))


def _table(header: list[str], rows: list[list[str]], group_columns: int, **titles: str) -> Table:
    """A rich table whose group names never wrap and whose other cells wrap only at spaces, so
    no number is cut to an ellipsis however narrow the terminal."""
    table = Table(caption_justify="left", **titles)
    for index, name in enumerate(header):
        cells = [row[index] for row in rows]
        wraps = index >= group_columns
        width = _column_width(name, cells, wraps)
        table.add_column(
            name, justify="right" if wraps else "left", no_wrap=not wraps, min_width=width
        )
    for row in rows:
        table.add_row(*row)
    return table


def _width(header: list[str], rows: list[list[str]], group_columns: int) -> int:
    """The narrowest one table of these columns can be without cutting a word (3 characters of
    border and padding per column)."""
    words = sum(
        _column_width(name, [row[i] for row in rows], i >= group_columns)
        for i, name in enumerate(header)
    )
    return words + 3 * len(header) + 1


def _print(
    console: Console, header: list[str], rows: list[list[str]], groups: int, **titles: str
) -> None:
    """Prints the table, wrapping cells at spaces to fit the terminal; where even that does not
    fit, at its natural width (the terminal then wraps the lines) rather than let rich drop a
    column or cut a cell."""
    table = _table(header, rows, groups, **titles)
    terminal_width = console.width
    if _width(header, rows, groups) > terminal_width:
        unbounded = console.options.update_width(10_000)
        console.width = Measurement.get(console, unbounded, table).maximum
    try:
        console.print(table)
    finally:
        console.width = terminal_width


def print_report(comparison: Comparison, console: Console) -> None:
    """The rich tables and notes in the terminal. Where the whole table is wider than the
    terminal, what each group costs (parameters onwards) goes into a second table below, keyed
    by the same group columns, rather than cutting numbers short."""
    header, rows = table_rows(comparison)
    titles = {"title": f"{title(comparison)}\n{scope_line(comparison)}"}
    groups = len(comparison.by)
    split = header.index("params")
    if _width(header, rows, groups) <= console.width:
        _print(console, header, rows, groups, **titles, caption=caption(comparison))
    else:
        _print(console, header[:split], [row[:split] for row in rows], groups, **titles)
        cost_header = [*header[:groups], *header[split:]]
        cost_rows = [[*row[:groups], *row[split:]] for row in rows]
        cost_title = "what each model costs"
        _print(
            console, cost_header, cost_rows, groups, title=cost_title, caption=caption(comparison)
        )
    if (suite := comparison.suite) is not None:
        header, rows = suite_rows(suite)
        _print(console, header, rows, 1, title=suite_heading(suite), caption=suite_caption(suite))
        for note in suite_notes(suite):
            console.print(f"  {note}", markup=False, highlight=False)
    if lines := compute_lines(comparison):
        console.print(Text.assemble(("compute spent ", "bold"), lines[0]), highlight=False)
        for line in lines[1:]:
            console.print(f"  {line}", markup=False, highlight=False)
    if notes := chance_notes(comparison):
        console.print("[bold]chance levels[/]")
        for note in notes:
            console.print(f"  {note}", markup=False, highlight=False)
    if notes := selection_notes(comparison):
        console.print(Text(selection_heading(comparison), style="bold"))
        for note in notes:
            console.print(f"  {note}", markup=False, highlight=False)
    if comparison.unfinished:
        heading = "failed and unfinished runs (not in the table above)"
        _print_left_out(console, heading, *unfinished_rows(comparison))
    if comparison.unreadable:
        heading = f"unreadable runs (left out: fix or delete their {RESULTS_FILE})"
        _print_left_out(console, heading, *unreadable_rows(comparison))
    for warning in comparison.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
