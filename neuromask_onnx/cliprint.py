"""What the `neuromask` commands print: the progress bar, the result tables, the op report.

The library never prints; it returns results and calls `progress(done, total, what)`. This
module turns those into terminal output (rich on stderr for the bar, stdout for the tables),
so a command in cli.py is its flags, one library call and one call here. rich and the
library modules are imported when a function runs, not on import (`--version` stays instant).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from .demo import DemoRun
    from .pipeline import ExplainRun, Progress
    from .rewrite import OpStatus


@contextlib.contextmanager
def progress_bar(quiet: bool, unit: str) -> Iterator[Progress]:
    """A progress bar on stderr fed by the library's progress(done, total, what) calls."""
    if quiet:
        from .pipeline import noop

        yield noop
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    with Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
             TextColumn(unit), TimeRemainingColumn(), transient=True,
             console=Console(stderr=True)) as bar:
        task: Any = None
        last = (0, 0)

        def show(done: int, total: int, what: str) -> None:
            nonlocal task, last
            if task is None or total != last[1] or done < last[0]:  # a new phase: a new bar
                if task is not None:
                    bar.remove_task(task)
                task = bar.add_task(what, total=total)
            bar.update(task, completed=done, description=what)
            last = (done, total)

        yield show


def print_ops(rows: Sequence[OpStatus]) -> None:
    """`neuromask ops MODEL`: one line per op type, then what blocks the exact gradient."""
    from .rewrite import ESTIMATED

    traced = rows and rows[0].on_path is not None
    w = max([28, *(len(r.op_type) + 2 for r in rows)])
    typer.echo(f"{'op':<{w}}{'nodes':>6}{'on path':>9}  status")
    for r in rows:
        on = "-" if r.on_path is None else str(r.on_path)
        typer.echo(f"{r.op_type:<{w}}{r.count:>6}{on:>9}  {r.status}")
    blocking = [f"{r.op_type} (at {'; '.join(r.where)})" if r.where else r.op_type
                for r in rows if r.status == "unsupported" and (r.on_path or not traced)]
    estimated = [r.op_type for r in rows if r.status == ESTIMATED and (r.on_path or not traced)]
    if not traced:
        typer.echo("(the gradient path could not be traced: the input has dynamic dimensions)")
    if blocking:
        typer.echo(f"unsupported on the gradient path: {', '.join(blocking)} "
                   "(explain --gradient auto estimates the mask gradient from model runs)")
    elif estimated:
        typer.echo(f"every op on the gradient path is supported; {', '.join(estimated)}: "
                   f"{ESTIMATED}")
    else:
        typer.echo("every op on the gradient path is supported")


def print_explained(run: ExplainRun, out: Path, score: bool) -> None:
    """`neuromask explain`'s table (and, for tabular inputs, the features by importance)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"NeuroMask: {len(run.items)} mask(s), {len(run.written)} files in {out}")
    cols = ["input", "target", "p before", "p after", "steps", "s/step", "seconds"]
    if score:
        cols += ["A: ins - del", "B: ins - del"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("input", "target") else "right")
    for (_inp, ex), stem in zip(run.items, run.stems, strict=True):
        tgt = f"{ex.target} {ex.label}" if ex.label else str(ex.target)
        table.add_row(stem, tgt, f"{ex.prob_before:.3f}", f"{ex.prob_after:.3f}",
                      str(ex.steps), f"{ex.timings['per_step']:.4f}",
                      f"{ex.timings['optimize']:.2f}",
                      *([f"{ex.scores['A_insertion_minus_deletion']:.3f}",
                         f"{ex.scores['B_insertion_minus_deletion']:.3f}"] if score else []))
    Console().print(table)
    if run.layout == "NF":  # tabular: the features by importance
        from .onnxml import feature_order

        for (_inp, ex), stem in zip(run.items, run.stems, strict=True):
            top = feature_order(ex.mask, run.feature_names)[:8]
            typer.echo(f"{stem}: " + ", ".join(f"{f['name']} {f['mask']:.2f}" for f in top))


def print_summary(rows: list[dict[str, float | str]], cols: list[str], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from .metrics import METRICS

    table = Table(title=title)
    for c in cols:
        better = METRICS.get(c)
        table.add_column(f"{c} ({'up' if better == 'higher' else 'down'})" if better else c,
                         justify="left" if c == "method" else "right")
    for r in rows:
        table.add_row(*[f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r.get(c, "-"))
                        for c in cols])
    Console(width=200).print(table)


def print_demo(res: DemoRun, out: Path, quiet: bool, title: str) -> None:
    ex = res.explained.items[0][1]
    if not quiet:
        print_summary(res.compared.rows, res.compared.columns, title)
    typer.echo(f"explained class {ex.target} ({ex.label}): p = {ex.prob_before:.3f}, "
               f"{ex.prob_after:.3f} with the mask applied")
    files = sorted(p.name for p in [*res.explained.written, *res.compared.written])
    typer.echo(f"wrote {len(files)} files into {out}/: {', '.join(files)}")
    typer.echo(f"open {out / 'report.html'} in a browser to see every method's map")
