"""What `retrieval index` shows on the terminal: the progress bar while it runs, the report and warnings after."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from indexer.pipeline import IndexReport, Progress


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable[[int], Progress]]:
    """A rich progress bar on stderr with slices/s; yields a function that starts it for a total."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed or 0.0:.1f} slices/s")

    with ExitStack() as stack:  # the bar appears only once work starts: a run refused before it prints nothing else

        def start(total: int) -> Progress:
            bar = stack.enter_context(RichProgress(TextColumn("indexing"), BarColumn(), MofNCompleteColumn(), Rate(), TimeRemainingColumn(),
                                                   console=Console(stderr=True), disable=not enabled))
            task = bar.add_task("indexing", total=total)
            return lambda n: bar.advance(task, n)

        yield start


def print_warnings(report: IndexReport) -> None:
    """What opening the index repaired, and the missing series kept, on stderr."""
    import sys

    for note in report.notes:
        print(f"warning: {note}", file=sys.stderr)
    if report.series_missing:
        print(f"warning: {len(report.series_missing)} indexed series are missing (first: {report.series_missing[0]}); "
              "kept in the index: `retrieval index ... --prune` removes them", file=sys.stderr)


def print_report(report: IndexReport, shown: int = 10) -> None:
    """Human summary of a run on stdout, skipped files (first few) with their reasons; warnings on stderr."""
    print_warnings(report)
    print(f"indexed {report.series_indexed} series ({report.slices_added} slices, {report.slices_per_s:.1f} slices/s), "
          f"{report.series_unchanged} unchanged, {report.series_removed} removed ({report.slices_removed} slices); "
          f"{report.slices_empty} empty slices not indexed; index {report.index.get('kind', '?')}"
          + (f", recall@10 {report.index['recall_at_10']}" if "recall_at_10" in report.index else ""))
    if report.skipped:
        print(f"skipped {len(report.skipped)}:")
        for item in report.skipped[:shown]:
            print(f"  {item.path}: {item.reason}")
        if len(report.skipped) > shown:
            print(f"  … and {len(report.skipped) - shown} more (--json lists all)")
