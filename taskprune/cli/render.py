"""What the CLI shows: progress bars, tables and result lines (the library itself never prints)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

from ..runtime.distributed import current


def tqdm_progress(items: Iterable[Any], desc: str, total: int) -> Iterable[Any]:
    """A progress bar on stderr for long work; in a job of several processes only rank 0's."""
    from tqdm.auto import tqdm

    if not current().is_main:
        return items
    return tqdm(items, desc=desc, total=total, leave=False, file=sys.stderr, dynamic_ncols=True)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:  # noqa: ANN401
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def echo(text: str = "") -> None:
    """Print a result line; in a job of several processes only rank 0 prints."""
    if current().is_main:
        print(text, flush=True)


def ratio(values: list[Any]) -> str:
    """``after / before`` of a two-column row, when both are numbers."""
    if len(values) == 2 and all(isinstance(v, (int, float)) for v in values) and values[0]:
        return f"{values[1] / values[0]:.2f}"
    return ""


def used(fit: list[Any], asked: int) -> str:
    """How many fit examples were used, and why when that is fewer than asked (the split holds no more)."""
    return f"{len(fit)} examples" + (f" (asked for {asked}: all the fit split holds)" if len(fit) < asked else "")


def ranks_text(counts: list[int] | None) -> str:
    """``, 2 processes: 16 + 16 examples`` when several processes shared the work."""
    if not counts or len(counts) == 1:
        return ""
    return f", {len(counts)} processes: {' + '.join(str(c) for c in counts)} examples"
