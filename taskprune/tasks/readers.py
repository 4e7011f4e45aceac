"""Raw row readers for the file formats GLUE, SuperGLUE and users ship: TSV, CSV, JSONL, JSON.

Each reader yields ``(line_number, row)`` pairs, ``row`` being a dict of column -> value, so error
messages can point at the offending line. GLUE quirks handled here:

* TSV is read with quoting disabled (``csv.QUOTE_NONE``): MRPC and RTE sentences contain unbalanced
  ``"`` characters that a quoting parser would swallow across lines.
* Files are decoded as ``utf-8-sig``: MRPC's header starts with a byte-order mark, which would otherwise
  end up in the first column name (``"\\ufeffQuality"``).
* A row whose field count differs from the header is an error naming the file and line, not a silent
  shift of columns.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from taskprune.errors import TaskpruneError

Row = dict[str, Any]
Reader = Callable[[Path], Iterator[tuple[int, Row]]]

# Some GLUE/QNLI passages are long; the csv module's default field limit (128 KiB) is too small for
# a few real-world files.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def _open(path: Path):
    try:
        return path.open("r", encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise TaskpruneError(f"data file not found: {path}") from None
    except OSError as exc:
        raise TaskpruneError(f"cannot read data file {path}: {exc.strerror or exc}") from None


def _read_delimited(path: Path, delimiter: str, quoting: int) -> Iterator[tuple[int, Row]]:
    with _open(path) as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        try:
            header = next(reader)
        except StopIteration:
            raise TaskpruneError(f"data file {path} is empty; it needs a header row") from None
        except csv.Error as exc:
            raise TaskpruneError(f"{path}, line 1: cannot parse header: {exc}") from None
        header = [h.strip() for h in header]
        try:
            for fields in reader:
                line = reader.line_num
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue  # blank line
                if len(fields) != len(header):
                    raise TaskpruneError(
                        f"{path}, line {line}: {len(fields)} fields but the header has {len(header)} "
                        f"({header}); is the delimiter right?"
                    )
                yield line, dict(zip(header, fields))
        except csv.Error as exc:
            raise TaskpruneError(f"{path}, line {reader.line_num}: cannot parse: {exc}") from None


def read_tsv(path: Path) -> Iterator[tuple[int, Row]]:
    """Tab-separated with a header row, quoting disabled (GLUE style)."""
    return _read_delimited(path, "\t", csv.QUOTE_NONE)


def read_csv(path: Path) -> Iterator[tuple[int, Row]]:
    """Comma-separated with a header row and standard ``"`` quoting (what spreadsheets and pandas write)."""
    return _read_delimited(path, ",", csv.QUOTE_MINIMAL)


def read_jsonl(path: Path) -> Iterator[tuple[int, Row]]:
    """One JSON object per line; blank lines are skipped."""
    with _open(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskpruneError(f"{path}, line {line_no}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise TaskpruneError(f"{path}, line {line_no}: expected a JSON object, got {type(row).__name__}")
            yield line_no, row


def read_json(path: Path) -> Iterator[tuple[int, Row]]:
    """A JSON array of objects (row numbers count from 1)."""
    with _open(path) as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as exc:
            raise TaskpruneError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise TaskpruneError(f"{path}: a .json data file must hold a list of objects; use .jsonl for one per line")
    yield from enumerate(data, start=1)


#: Reader per file extension (lowercase, with dot).
READERS: dict[str, Reader] = {".tsv": read_tsv, ".csv": read_csv, ".jsonl": read_jsonl, ".json": read_json}


def read_rows(path: Path) -> Iterator[tuple[int, Row]]:
    """Rows of a data file, the reader chosen by extension."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise TaskpruneError(f"unsupported data file type {path.name!r}; use one of {sorted(READERS)}")
    if not path.is_file():
        raise TaskpruneError(f"data file not found: {path}")
    return _utf8_checked(reader(path), path)


def _utf8_checked(rows: Iterator[tuple[int, Row]], path: Path) -> Iterator[tuple[int, Row]]:
    """The rows, with a file that is not UTF-8 text turned into one line naming it and the byte."""
    try:
        yield from rows
    except UnicodeDecodeError as err:
        raise TaskpruneError(f"data file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
