"""Lazy JSONL row tables: a manifest kept as byte ranges of its file plus a few numpy columns, not Python dicts.

A training manifest (one JSON object per ``\\n``-terminated line) held as a list of dicts costs every rank of
every node ~700 bytes a row (a dict, its keys, strings and floats: 0.7 GB per rank at 1M rows). A
:class:`RowTable` scans the file once and keeps, per valid row,

- where it is: byte offset (int64), length (int32) and 1-based line number (int32): 16 bytes;
- the per-row numbers that samplers and filters need without parsing the row (e.g. a clip's duration, a split
  code), each a numpy array of its own dtype (``columns``); string-valued columns (``str``) are stored as int16
  codes into a list of distinct values (``categories``).

A row is read again (one ``os.pread``) and parsed when it is indexed; iterating reads the file in large
sequential chunks. Indexing with a slice, a list, or an integer/boolean array gives another table over the same
file (sharing nothing but the path), so splits and subsets stay compact. A subclass turns the decoded JSON into a
record by overriding :meth:`RowTable.parse` (it gets ``(obj, "<file>:<line>")`` and may validate again).

Scanning (:meth:`RowTable.scan`): lines are split on ``b"\\n"`` only (a U+2028 inside a JSON string stays inside
its row; a ``\\r\\n`` ending is JSON whitespace), decoded as strict UTF-8 (a BOM at the very start of the file is
skipped), and lines of only whitespace are ignored. A line that is not UTF-8 or not JSON, or that the caller's
``check`` rejects with one of ``errors``, is reported as a :class:`BadRow` (line number, ``"<file>:<line>"`` and the
exception) and skipped; the caller decides the message and whether to log or refuse.
"""

from __future__ import annotations

import array
import copy
import json
import operator
import os
from collections import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple

import numpy as np

__all__ = ["BadRow", "RowTable", "RowTableError", "ScanResult"]

# rows read with one pread when iterating (bounded, so a table of very long rows still reads in pieces)
_CHUNK_ROWS = 4096
_CHUNK_BYTES = 8 << 20
_MAX_CATEGORIES = int(np.iinfo(np.int16).max)
_BOM = b"\xef\xbb\xbf"


class RowTableError(ValueError):
    """A row table that cannot be built or read (names the file, line or column and why)."""


@dataclass(frozen=True, slots=True)
class BadRow:
    """A skipped line: 1-based ``line``, ``where`` (``"<file>:<line>"``) and the ``error`` it raised.

    ``error`` is a ``UnicodeDecodeError`` (not UTF-8), a ``json.JSONDecodeError`` (not JSON) or whatever the scan's
    ``check`` raised (one of its ``errors`` types).
    """

    line: int
    where: str
    error: Exception

    @property
    def not_json(self) -> bool:
        """True when the line was not UTF-8 JSON (as opposed to a JSON value ``check`` rejected)."""
        return isinstance(self.error, (json.JSONDecodeError, UnicodeDecodeError))


class ScanResult(NamedTuple):
    """What :meth:`RowTable.scan` found: the valid rows, the skipped lines (line order) and the count of lines that
    were JSON (valid or rejected by ``check``; blank lines and non-JSON lines not counted)."""

    table: "RowTable"
    bad: list[BadRow]
    json_rows: int


def _typecode(dtype: np.dtype) -> str:
    """The ``array.array`` typecode that stores ``dtype`` byte for byte (used while scanning: no per-row objects)."""
    if dtype == np.bool_:
        return "B"
    for code in (dtype.char, *"bBhHiIlLqQfd"):
        try:
            if array.array(code).itemsize == dtype.itemsize and np.dtype(code).kind == dtype.kind:
                return code
        except (ValueError, TypeError):
            continue
    raise RowTableError(f"column dtype {dtype} cannot be stored (use a numeric dtype or str)")


def _finish(buf: array.array, dtype: np.dtype) -> np.ndarray:
    """The scanned values as a numpy array (a view of ``buf``'s memory, no copy)."""
    out = np.frombuffer(buf, dtype=np.uint8 if dtype == np.bool_ else dtype) if len(buf) else np.zeros(0, dtype)
    return out.view(np.bool_) if dtype == np.bool_ else out


class RowTable(abc.Sequence):
    """The valid rows of a JSONL file as byte ranges plus numpy columns (a read-only ``Sequence``).

    Build one with :meth:`scan`. ``table[i]`` re-reads row ``i`` and returns :meth:`parse` of its JSON (the decoded
    object itself unless a subclass parses it into a record); ``table[a:b]``, ``table[[i, j]]``,
    ``table[int or bool array]`` return a table of those rows; ``table.column(name)`` is a numpy array ``[N]``.

    Memory: 16 bytes a row (offset int64, length int32, line int32) plus each column's itemsize; :attr:`nbytes`.

    Attributes:
        path: the file, absolute (what is read).
        name: the file as the caller named it (what messages and ``where`` strings show).
        offsets, lengths, lines: ``[N]`` int64 / int32 / int32: each row's byte range and 1-based line.
        categories: ``{column: [distinct values]}`` for ``str`` columns (the column holds int16 indices).
    """

    #: exception type raised when a row cannot be read back (a subclass may use its project's error type)
    error: type[Exception] = RowTableError

    def __init__(self, path: str | Path, offsets: np.ndarray, lengths: np.ndarray, lines: np.ndarray,
                 columns: Mapping[str, np.ndarray] | None = None, categories: Mapping[str, list[str]] | None = None,
                 name: str | None = None):  # fmt: skip
        self.path = Path(path).absolute()
        self.name = str(path) if name is None else name
        self.offsets, self.lengths, self.lines = offsets, lengths, lines
        self._columns = dict(columns or {})
        self.categories = dict(categories or {})
        n = int(offsets.size)
        for key, arr in (("lengths", lengths), ("lines", lines), *self._columns.items()):
            if arr.shape != (n,):
                raise RowTableError(f"{self.name}: column {key!r} has shape {arr.shape}, expected ({n},)")
        self._fd: int | None = None

    # ------------------------------------------------------------------------------------------------- building
    @classmethod
    def scan(cls, path: str | Path, check: Callable[[Any, str], Mapping[str, Any] | None] | None = None,
             columns: Mapping[str, Any] | None = None, errors: tuple[type[Exception], ...] = (ValueError,),
             **kwargs) -> ScanResult:  # fmt: skip
        """Read ``path`` once (streamed) and keep where each valid row is, plus its ``columns``.

        Args:
            path: the JSONL file.
            check: ``check(obj, where) -> {column: value}`` for a decoded row (``where`` is ``"<file>:<line>"``);
                it raises one of ``errors`` to reject the row (reported in ``bad``). None: every JSON value is a row.
            columns: ``{name: numpy dtype or str}``: the per-row values ``check`` returns that the table keeps.
            errors: exception types of ``check`` that mean "bad row, skip it"; anything else propagates.
            kwargs: passed to the constructor of ``cls`` (e.g. ``name``).

        Returns:
            :class:`ScanResult` ``(table, bad rows in line order, number of JSON lines)``.

        A row whose column value its dtype cannot hold (a float in an int column, an int out of range) is a bad row
        (:class:`RowTableError` naming the field).

        Raises:
            OSError: the file cannot be read. RowTableError: ``check`` returns no value for a column, or a ``str``
            column has more than 32767 distinct values.
        """
        path = Path(path)
        name = kwargs.pop("name", str(path))
        specs = {k: (str if v is str else np.dtype(v)) for k, v in (columns or {}).items()}
        bufs = {k: array.array("h" if d is str else _typecode(d)) for k, d in specs.items()}
        codes: dict[str, dict[str, int]] = {k: {} for k, d in specs.items() if d is str}
        offsets, lengths, lines = array.array("q"), array.array("i"), array.array("i")
        bad: list[BadRow] = []
        n_json, pos = 0, 0
        with open(path, "rb") as fh:
            for n, raw in enumerate(fh, 1):  # bytes split on b"\n" only: offsets are file positions
                at, pos = pos, pos + len(raw)
                if n == 1 and raw.startswith(_BOM):
                    at, raw = at + len(_BOM), raw[len(_BOM) :]
                if not raw.strip():
                    continue
                where = f"{name}:{n}"
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    bad.append(BadRow(n, where, e))
                    continue
                n_json += 1
                try:
                    values = check(obj, where) if check is not None else None
                except errors as e:
                    bad.append(BadRow(n, where, e))
                    continue
                try:
                    vals = [values[k] for k in bufs]  # type: ignore[index]
                except (KeyError, TypeError) as e:
                    raise RowTableError(f"{where}: check returned no value for every column {list(bufs)}") from e
                fits = True
                for j, ((k, buf), v) in enumerate(zip(bufs.items(), vals)):
                    if specs[k] is str:
                        v = codes[k].setdefault(str(v), len(codes[k]))
                        if v >= _MAX_CATEGORIES:
                            raise RowTableError(f"{where}: column {k!r} has more than {_MAX_CATEGORIES} distinct "
                                                "values (store it as a number)")  # fmt: skip
                    try:
                        buf.append(v)
                    except (TypeError, OverflowError) as e:  # a bad row: undo its columns so far, report it
                        for earlier in list(bufs.values())[:j]:
                            earlier.pop()
                        bad.append(BadRow(n, where, RowTableError(f"{where}: field {k!r}: {v!r} does not fit "
                                                                  f"{specs[k]} ({e})")))  # fmt: skip
                        fits = False
                        break
                if not fits:
                    continue
                offsets.append(at)
                lengths.append(len(raw))
                lines.append(n)
        cols = {k: _finish(bufs[k], np.dtype(np.int16) if d is str else d) for k, d in specs.items()}
        cats = {k: list(table) for k, table in codes.items()}
        tab = cls(path, _finish(offsets, np.dtype(np.int64)), _finish(lengths, np.dtype(np.int32)),
                  _finish(lines, np.dtype(np.int32)), cols, cats, name=name, **kwargs)  # fmt: skip
        return ScanResult(tab, bad, n_json)

    # -------------------------------------------------------------------------------------------------- columns
    @property
    def columns(self) -> list[str]:
        """Names of the per-row numeric columns."""
        return list(self._columns)

    def column(self, name: str) -> np.ndarray:
        """Column ``name`` as a read-only numpy array ``[N]`` (int16 codes for a ``str`` column)."""
        try:
            out = self._columns[name].view()
        except KeyError:
            raise KeyError(f"{self.name}: no column {name!r} (have {self.columns})") from None
        out.flags.writeable = False
        return out

    def without(self, *names: str) -> "RowTable":
        """The same rows without columns ``names`` (e.g. a key used only while scanning)."""
        out = self._copy()
        out._columns = {k: v for k, v in self._columns.items() if k not in names}
        out.categories = {k: v for k, v in self.categories.items() if k not in names}
        return out

    @property
    def nbytes(self) -> int:
        """Bytes held by the row index and the columns."""
        return int(sum(a.nbytes for a in (self.offsets, self.lengths, self.lines, *self._columns.values())))

    # ------------------------------------------------------------------------------------------------- sequence
    def __len__(self) -> int:
        return int(self.offsets.size)

    def _copy(self) -> "RowTable":
        out = copy.copy(self)
        out._fd = None  # a descriptor belongs to the table that opened it
        return out

    def _subset(self, idx) -> "RowTable":
        out = self._copy()
        out.offsets, out.lengths, out.lines = self.offsets[idx], self.lengths[idx], self.lines[idx]
        out._columns = {k: v[idx] for k, v in self._columns.items()}
        return out

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self._subset(i)
        if isinstance(i, (list, np.ndarray)):
            idx = np.asarray(i)
            if idx.size == 0:
                idx = idx.astype(np.int64)
            elif idx.dtype != np.bool_ and idx.dtype.kind not in "iu":
                raise TypeError(f"rows are selected by int or bool arrays, got {idx.dtype}")
            return self._subset(idx)
        n = len(self)
        i = operator.index(i)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError(f"{self.name}: row {i} of {n}")
        return self._decode(self._pread(int(self.offsets[j]), int(self.lengths[j])), j)

    def __iter__(self) -> Iterator[Any]:
        """Rows in table order; runs of rows that lie close together in the file are read with one pread."""
        n = len(self)
        for a in range(0, n, _CHUNK_ROWS):
            b = min(n, a + _CHUNK_ROWS)
            off, ln = self.offsets[a:b], self.lengths[a:b]
            start, end = int(off[0]), int(off[-1]) + int(ln[-1])
            ordered = bool(np.all(off[1:] >= off[:-1] + ln[:-1]))
            if ordered and end - start <= max(_CHUNK_BYTES, 2 * int(ln.sum(dtype=np.int64))):
                buf = self._pread(start, end - start)
                for k in range(b - a):  # slice each row out of the one read
                    o = int(off[k]) - start
                    yield self._decode(buf[o : o + int(ln[k])], a + k)
            else:
                for k in range(b - a):
                    yield self._decode(self._pread(int(off[k]), int(ln[k])), a + k)

    def __add__(self, other):
        """Rows of both: a table when ``other`` is a table of the same kind over the same file, else a list."""
        if (type(other) is type(self) and other.path == self.path and other.columns == self.columns
                and other.categories == self.categories):  # fmt: skip
            out = self._copy()
            out.offsets, out.lengths, out.lines = (np.concatenate([a, b]) for a, b in
                                                   ((self.offsets, other.offsets), (self.lengths, other.lengths),
                                                    (self.lines, other.lines)))  # fmt: skip
            out._columns = {k: np.concatenate([v, other._columns[k]]) for k, v in self._columns.items()}
            return out
        return list(self) + list(other)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} rows, columns={self.columns})"

    # ------------------------------------------------------------------------------------------------- reading
    def parse(self, obj: Any, where: str) -> Any:
        """What ``table[i]`` returns for a row's decoded JSON ``obj`` (``where``: ``"<file>:<line>"``); here ``obj``
        itself. Subclasses return a record (and may validate again, raising their error type)."""
        return obj

    def _pread(self, offset: int, length: int) -> bytes:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return os.pread(self._fd, length, offset)

    def _decode(self, raw: bytes, i: int) -> Any:
        where = f"{self.name}:{int(self.lines[i])}"
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:  # the file was rewritten after it was scanned
            raise self.error(f"{where}: row changed since the file was read ({e}); reopen it") from e
        return self.parse(obj, where)

    def close(self) -> None:
        """Close the file descriptor (reopened on the next read)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_fd": None}  # a descriptor is per process (DataLoader workers reopen the file)

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            self.close()
