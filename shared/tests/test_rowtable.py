"""The lazy JSONL row table (musiccore.data.rowtable): rows kept as byte ranges and numpy columns, read back on use;
line splitting on '\\n' only, bad lines reported with their line numbers, subsets that stay tables."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from musiccore.data import RowTable, RowTableError
from musiccore.data import rowtable as rowtable_mod


def _check(obj, where):
    """A typical caller's check: an object with a numeric ``d`` and a text ``split``."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: not an object")
    if "d" not in obj:
        raise KeyError(f"{where}: no d")
    return {"d": obj["d"], "split": obj.get("split", "train")}


def test_offsets_lines_unicode_crlf_and_blank_lines(tmp_path):
    """CRLF endings, blank and whitespace lines, a BOM, U+2028/U+0085 inside strings, no final newline: every row
    is one '\\n'-terminated line, its byte range is exactly that line, its line number counts every line."""
    lines = [b'\xef\xbb\xbf{"d": 1, "s": "caf\xc3\xa9"}\r\n', b"\n", b"  \t\r\n",
             '{"d": 2.5, "s": "a\u2028b\u0085c", "split": "valid"}\n'.encode(), b'\r\n',
             b'{"d": 3, "nested": {"x": [1, 2]}}']  # fmt: skip
    p = tmp_path / "m.jsonl"
    p.write_bytes(b"".join(lines))
    scan = RowTable.scan(p, _check, {"d": np.float64, "split": str}, errors=(ValueError, KeyError))
    t = scan.table
    assert scan.bad == [] and scan.json_rows == 3 and len(t) == 3
    assert list(t) == [{"d": 1, "s": "café"}, {"d": 2.5, "s": "a\u2028b\u0085c", "split": "valid"},
                       {"d": 3, "nested": {"x": [1, 2]}}]  # fmt: skip
    assert t.lines.tolist() == [1, 4, 6]
    data = p.read_bytes()
    starts = [3, sum(map(len, lines[:3])), sum(map(len, lines[:5]))]  # the BOM is not part of row 1
    assert t.offsets.tolist() == starts
    for k, (a, n) in enumerate(zip(t.offsets.tolist(), t.lengths.tolist())):
        assert json.loads(data[a : a + n]) == t[k]  # the range holds the row (and its own line ending only)
        assert data[a : a + n].count(b"\n") <= 1 and not data[a : a + n].rstrip(b"\r\n").count(b"\n")
    assert t.column("d").tolist() == [1.0, 2.5, 3.0] and t.column("d").dtype == np.float64
    assert t.categories["split"] == ["train", "valid"] and t.column("split").tolist() == [0, 1, 0]
    assert t.nbytes == 3 * (8 + 4 + 4 + 8 + 2)


def test_bad_lines_are_reported_with_line_numbers(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_bytes(b'{"d": 1}\n{oops\n[1, 2]\n{"x": 1}\n{"d": "slow"}\n\xff\xfe{"d": 1}\n{"d": 2}\n'
                  b'{"d": 99999}\n{"d": 7}\n')  # fmt: skip
    scan = RowTable.scan(p, _check, {"d": np.int16, "split": str}, errors=(ValueError, KeyError), name="M")
    assert [r["d"] for r in scan.table] == [1, 2, 7] and scan.table.lines.tolist() == [1, 7, 9]
    assert [(b.line, b.where, b.not_json) for b in scan.bad] == [(2, "M:2", True), (3, "M:3", False),
                                                                  (4, "M:4", False), (5, "M:5", False),
                                                                  (6, "M:6", True), (8, "M:8", False)]  # fmt: skip
    assert isinstance(scan.bad[0].error, json.JSONDecodeError) and isinstance(scan.bad[4].error, UnicodeDecodeError)
    assert str(scan.bad[1].error) == "M:3: not an object" and "M:4: no d" in str(scan.bad[2].error)
    # a value its column cannot hold: reported (not a crash, not a half-written row)
    for b, field in ((scan.bad[3], "'d': 'slow'"), (scan.bad[5], "'d': 99999")):
        assert isinstance(b.error, RowTableError) and str(b.error).startswith(f"{b.where}: field {field}")
    assert scan.json_rows == 7  # every line that parsed, rejected or not
    assert scan.table.column("split").size == 3  # the rejected rows left no value behind
    # an error type the caller did not list is a bug, not a bad row: it propagates
    with pytest.raises(KeyError):
        RowTable.scan(p, _check, {"d": np.int16}, errors=(ValueError,))
    with pytest.raises(RowTableError, match=r"m.jsonl:1: check returned no value"):
        RowTable.scan(p, lambda o, w: {}, {"d": np.float64})


def test_indexing_subsets_and_concatenation(tmp_path, monkeypatch):
    monkeypatch.setattr(rowtable_mod, "_CHUNK_ROWS", 7)  # iteration crosses many chunk boundaries
    n = 50
    rows = [{"d": i / 3, "split": ["train", "valid", "test"][i % 3], "txt": "é" * (i % 5)} for i in range(n)]
    p = tmp_path / "m.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    t = RowTable.scan(p, _check, {"d": np.float64, "split": str}, errors=(ValueError,)).table
    assert list(t) == rows and t[-1] == rows[-1] and t[np.int64(4)] == rows[4]
    assert t.column("d").tolist() == [r["d"] for r in rows]  # float64: exactly the parsed value
    with pytest.raises(IndexError):
        t[n]
    with pytest.raises(TypeError):
        t[np.array([0.5])]
    sub = t[10:40:3]
    assert isinstance(sub, RowTable) and list(sub) == rows[10:40:3] and sub.column("d").tolist() == [
        r["d"] for r in rows[10:40:3]]  # fmt: skip
    perm = np.random.default_rng(0).permutation(n)
    assert list(t[perm]) == [rows[i] for i in perm]  # out of file order: read row by row
    valid = t[t.column("split") == t.categories["split"].index("valid")]
    assert list(valid) == [r for r in rows if r["split"] == "valid"] and list(t[[]]) == []
    both = t[:3] + t[[40, 41]]
    assert isinstance(both, RowTable) and list(both) == rows[:3] + rows[40:42]
    assert t[:2] + [1] == rows[:2] + [1]  # with anything else: a list
    slim = t.without("split")
    assert slim.columns == ["d"] and "split" not in slim.categories and list(slim) == rows
    with pytest.raises(KeyError, match="no column 'split'"):
        slim.column("split")
    with pytest.raises(ValueError):
        t.column("d")[0] = 5.0  # columns are read-only views
    again = pickle.loads(pickle.dumps(t[5:9]))  # e.g. a DataLoader worker: reopens the file itself
    assert again._fd is None and list(again) == rows[5:9]


class Songs(RowTable):
    """A subclass parsing rows into records, with its own error type (as yue's SongTable and MERT's manifest)."""

    class Error(ValueError):
        pass

    error = Error

    def parse(self, obj, where):
        if obj.get("d", 0) < 0:
            raise self.Error(f"{where}: negative d")
        return (where, obj["d"])


def test_subclass_parses_rows_and_names_a_changed_file(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"d": 1}\n{"d": 2}\n{"d": 3}\n')
    t = Songs.scan(p, _check, {"d": np.int32}, errors=(ValueError,)).table
    assert isinstance(t[1:], Songs) and list(t) == [(f"{p}:1", 1), (f"{p}:2", 2), (f"{p}:3", 3)]
    p.write_text('{"d": 1}\n{"d": -2}\nxx\n')  # rewritten in place after the scan
    with pytest.raises(Songs.Error, match=rf"{p}:2: negative d"):
        t[1]
    with pytest.raises(Songs.Error, match=rf"{p}:3: row changed since the file was read"):
        t[2]


# a line is a JSON value, a blank line, or a line that is no JSON at all (or not UTF-8)
_json = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                     | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                     max_leaves=6)  # fmt: skip
_line = st.one_of(st.tuples(st.just("ok"), _json),
                  st.tuples(st.just("blank"), st.sampled_from(["", " ", "\t ", "\r"])),
                  st.tuples(st.just("bad"),
                            st.sampled_from([b"{oops", b"[1,", b'"open', b"\xff\xfe", b"nul", b"{}}"])))  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(items=st.lists(st.tuples(_line, st.sampled_from([b"\n", b"\r\n"])), max_size=20), last_newline=st.booleans())
def test_property_rows_are_the_json_of_the_good_lines(items, last_newline, tmp_path_factory):
    """Any mix of JSON values (text with U+2028, U+0085 ... written raw), blank lines, junk and non-UTF-8 lines, with
    LF or CRLF endings: the table's rows are ``json.loads`` of the good lines, in order, with their line numbers and
    exact byte ranges, and every other non-blank line is reported once with its number."""
    chunks, expect, expect_lines, bad_lines = [], [], [], []
    for n, ((kind, value), end) in enumerate(items, 1):
        if kind == "ok":
            raw = json.dumps(value, ensure_ascii=False).encode()
            expect.append(json.loads(raw))
            expect_lines.append(n)
        elif kind == "blank":
            raw = value.encode()
        else:
            raw = value
            bad_lines.append(n)
        chunks.append(raw + (end if n < len(items) or last_newline else b""))
    p = tmp_path_factory.mktemp("rt") / "m.jsonl"
    data = b"".join(chunks)
    p.write_bytes(data)
    scan = RowTable.scan(p)
    t = scan.table
    assert list(t) == expect and [t[k] for k in range(len(t))] == expect
    assert t.lines.tolist() == expect_lines and [b.line for b in scan.bad] == bad_lines
    assert all(b.not_json for b in scan.bad) and scan.json_rows == len(expect)
    for a, n in zip(t.offsets.tolist(), t.lengths.tolist()):
        assert (a == 0 or data[a - 1 : a] == b"\n") and data[a : a + n].rstrip(b"\r\n").count(b"\n") == 0
