"""Constrained decoding: a character automaton for well-formed ABC, applied as a ``transformers`` LogitsProcessor.

Why an automaton and not a grammar library: the hard constraint is arithmetic (every bar lasts exactly ``M:`` in
units of ``L:``), which a regex/CFG engine (outlines, xgrammar, transformers-cfg) can only express by expanding every
meter x unit x note-length combination into a huge grammar; a small hand-written automaton states it directly.

The language accepted (a strict subset of ABC 2.1 that every tool reads):

- header lines in this order: ``X:1``, ``L:<unit>``, ``M:<meter>``, ``K:<key>`` (values from fixed lists, or the
  values a prompt asked for);
- body: notes ``[~][^|_|=]<A-G a-g>[, or ' up to 2]<length>``, rests ``z<length>``, triplets ``(3`` of three notes of
  one length, broken rhythm ``>``/``<`` between two notes, single spaces, bar lines ``| || |: :| :: |]`` and a line
  break after a bar line; lengths from :data:`LENGTHS` (multiples of 1/4 unit);
- every bar lasts exactly the meter (no pickup bars), the tune has ``min_bars``..``max_bars`` bars and ends with
  ``|]`` (or ``:|`` at ``max_bars``, or any bar line when the token budget runs out), then at most two whitespace
  characters and EOS.

Reachability is kept at every step: a note is only accepted when the bar can still be completed (durations stay on a
1/4-unit grid, and a broken-rhythm or triplet group always has a completion), so the mask is never empty. When the
token budget left comes within the completion's length plus ``max_completion`` (one token can lengthen the
completion by at most that), the processor switches to *forced* mode and only admits tokens that spell that
completion (rests to fill the bar, then ``|]``), so the tune always ends well-formed before ``max_new_tokens``.

Per step and per row the allowed tokens come from a walk of the vocabulary's character trie from the automaton state
(pruning dead branches), cached per state: cost grows with the number of live tokens, not with the vocabulary. The
trie holds only tokens spelled from the automaton's alphabet (:data:`BODY_CHARS` plus the header lines' characters:
about 800 of LLaMA-2's 32,000 when key, meter and unit are given), and the commit of a pending note is computed once
per trie node rather than once per child character.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from fractions import Fraction

import torch

log = logging.getLogger(__name__)

# note-length suffixes and their value in units of L:
LENGTHS: dict[str, Fraction] = {
    "": Fraction(1), "2": Fraction(2), "3": Fraction(3), "4": Fraction(4), "6": Fraction(6), "8": Fraction(8), "12": Fraction(12), "16": Fraction(16), "/": Fraction(1, 2),
    "/2": Fraction(1, 2), "//": Fraction(1, 4), "/4": Fraction(1, 4), "3/2": Fraction(3, 2), "3/4": Fraction(3, 4),
}
# lengths a triplet note or a broken-rhythm pair may use (others give durations music21 cannot express)
GROUP_LENGTHS = frozenset({"", "2", "4", "/", "/2"})
GRID = Fraction(1, 4)  # every length above is a multiple of 1/4 unit: a bar can always be completed on this grid
_LEN_PREFIXES = {s[:i] for s in LENGTHS for i in range(len(s) + 1)}
BARS = ("|", "||", "|]", "|:", ":|", "::")
_BAR_PREFIXES = {b[:i] for b in BARS for i in range(1, len(b) + 1)}
UNITS = ("1/8", "1/16", "1/4")
METERS = ("4/4", "3/4", "2/4", "6/8", "9/8", "12/8", "2/2", "3/2", "3/8", "C", "C|")
_TONICS = ("C", "G", "D", "A", "E", "B", "F", "Bb", "Eb", "Ab", "F#", "C#", "Db", "Gb")
_MODES = ("", "m", "maj", "min", "dor", "mix", "lyd", "phr", "loc", "aeo", "ion")
KEYS = tuple(t + m for t in _TONICS for m in _MODES)
_NOTE_RE = re.compile(r"^(\^|_|=)?([A-Ga-gz])?([,']*)([0-9/]*)$")
# every character the body can accept (notes, accidentals, octave marks, lengths, rests, bar lines, groups, spacing);
# with the header lines' characters this is the automaton's alphabet: a token holding any other character is never
# allowed, so the processor leaves such tokens out of its trie (most of a 32k LLaMA vocabulary)
BODY_CHARS = frozenset("^_=ABCDEFGabcdefgz,'0123456789/~|:]><( \n")


def meter_value(m: str) -> Fraction:
    """``"6/8"`` -> 3/4 of a whole note; ``C`` = 4/4, ``C|`` = 2/2."""
    if m in ("C", "C|"):
        return Fraction(1)
    a, b = m.split("/")
    return Fraction(int(a), int(b))


def _rests_len(units: Fraction) -> int:
    """Characters of the greedy rest string that fills ``units`` (what :meth:`AbcAutomaton.completion` writes)."""
    n = 0
    for L, v in sorted(LENGTHS.items(), key=lambda kv: -kv[1]):
        while v <= units:
            n += 1 + len(L)
            units -= v
    return n


@dataclasses.dataclass(frozen=True)
class State:
    """Automaton state (hashable: the processor caches the allowed-token mask per state).

    Header: ``field`` indexes the header fields, ``text`` is the current line so far. Body: durations in units of
    ``L:`` (``meter`` = units per bar), ``pend`` = the note or bar line being spelled (committed at the next char)."""

    field: int = 0
    text: str = ""
    unit: str = ""
    meter_str: str = ""
    meter: Fraction = Fraction(0)
    pos: Fraction = Fraction(0)  # units elapsed in the current bar
    bars: int = 0  # closed bars
    pend: str = ""
    pend_kind: str = ""  # note | bar | tup | ""
    deco: bool = False
    broken: Fraction | None = None  # multiplier waiting for the next note (after > or <)
    prev_len: str | None = None  # length string of the note just committed (for > / <)
    prev_dur: Fraction = Fraction(0)
    tup_left: int = 0
    tup_len: str | None = None
    last_bar: str = ""
    ws: int = 0  # consecutive whitespace characters
    began: bool = False  # any note written
    ended: bool = False


class AbcAutomaton:
    """Character-level acceptor of the ABC subset above.

    Args:
        key / meter / unit: force these header values (e.g. the ones a prompt asked for); ``None`` = any listed one.
        min_bars / max_bars: bars per tune (``|]`` is refused before ``min_bars``; at ``max_bars`` the tune ends).
    """

    def __init__(self, key: str | None = None, meter: str | None = None, unit: str | None = None,
                 min_bars: int = 1, max_bars: int = 64):
        if meter is not None and meter not in METERS:
            raise ValueError(f"meter {meter!r} is not one the constrained decoder supports ({', '.join(METERS)})")
        if unit is not None and unit not in UNITS:
            raise ValueError(f"unit length {unit!r} is not one the constrained decoder supports ({', '.join(UNITS)})")
        if key is not None and key not in KEYS:
            raise ValueError(f"key {key!r} is not one the constrained decoder supports (e.g. G, Am, Ddor, F#m)")
        if not 1 <= min_bars <= max_bars:
            raise ValueError(f"need 1 <= min_bars <= max_bars, got {min_bars}, {max_bars}")
        self.min_bars, self.max_bars = min_bars, max_bars
        self.fields = [("X", ("1",)), ("L", (unit,) if unit else UNITS), ("M", (meter,) if meter else METERS),
                       ("K", (key,) if key else KEYS)]
        self.lines = [[f"{f}:{v}\n" for v in vals] for f, vals in self.fields]
        self.prefixes = [{ln[:i] for ln in lines for i in range(1, len(ln) + 1)} for lines in self.lines]
        #: characters :meth:`step` can ever accept (any other one is rejected from every state)
        self.alphabet = BODY_CHARS | frozenset("".join(ln for lines in self.lines for ln in lines))
        # longest completion from any body state: a note being spelled, a broken pair or triplet to close (3 notes),
        # a whole bar of rests, "|]\n"; the processor forces the completion this many tokens early, so the budget
        # always suffices even when one token makes the completion jump (e.g. a bar line: one more bar of rests)
        self.max_completion = 4 + 3 * 4 + max(_rests_len(meter_value(m) / Fraction(u)) for m in self.fields[2][1]
                                              for u in self.fields[1][1]) + 3
        self._units: dict[str, Fraction] = {}
        # one-slot memos keyed by the identity of a (frozen) state: a vocabulary walk steps one state with every
        # child character of a trie node, and the commit of a pending note / the note-fits test depend on the state only
        self._memo_commit: tuple[State | None, State | None] = (None, None)
        self._memo_fits: tuple[State | None, bool] = (None, False)

    def start(self) -> State:
        return State()

    # ---------------------------------------------------------------- stepping
    def run(self, s: State | None, text: str) -> State | None:
        """State after ``text`` (``None``: rejected)."""
        for ch in text:
            if s is None:
                return None
            s = self.step(s, ch)
        return s

    def step(self, s: State, ch: str) -> State | None:
        if s.field < len(self.fields):
            return self._step_header(s, ch)
        if s.ended:
            return dataclasses.replace(s, ws=s.ws + 1) if ch in " \n" and s.ws < 2 else None
        if s.pend_kind == "note":
            grown = self._grow_note(s, ch)
            if grown is not None:
                return grown
            src, c = self._memo_commit
            if src is not s:
                c = self._commit_note(s)
                self._memo_commit = (s, c)
            return None if c is None else self._step_stable(c, ch)
        if s.pend_kind == "bar":
            if s.pend + ch in _BAR_PREFIXES and self._bar_possible(s, s.pend + ch):
                return dataclasses.replace(s, pend=s.pend + ch)
            c = self._commit_bar(s)
            return None if c is None else self._step_stable(c, ch)
        if s.pend_kind == "tup":
            return dataclasses.replace(s, pend="", pend_kind="", tup_left=3, tup_len=None) if ch == "3" else None
        return self._step_stable(s, ch)

    def _step_header(self, s: State, ch: str) -> State | None:
        t = s.text + ch
        if t not in self.prefixes[s.field]:
            return None
        if ch != "\n":
            return dataclasses.replace(s, text=t)
        letter, value = t[0], t[2:-1]
        s = dataclasses.replace(s, field=s.field + 1, text="")
        if letter == "L":
            s = dataclasses.replace(s, unit=value)
        elif letter == "M":
            s = dataclasses.replace(s, meter_str=value)
        if s.field == len(self.fields):  # header done: bar length in units of L
            s = dataclasses.replace(s, meter=meter_value(s.meter_str) / Fraction(s.unit))
        return s

    def _effective(self, s: State, length: str) -> Fraction | None:
        """Duration (units) the note with ``length`` adds in state ``s``, or None when that length is not allowed."""
        d = LENGTHS[length]
        if (s.tup_left or s.broken is not None) and length not in GROUP_LENGTHS:
            return None
        if s.tup_left:
            if s.tup_len is not None and length != s.tup_len:
                return None  # the three notes of a triplet share one length (keeps the bar completable)
            if s.tup_len is None and s.pos + 2 * d > s.meter:
                return None
            return d * Fraction(2, 3)
        if s.broken is not None:
            return d * s.broken
        return d

    def _fits(self, s: State, length: str) -> bool:
        eff = self._effective(s, length)
        if eff is None:
            return False
        new = s.pos + eff
        if new > s.meter:
            return False
        stable = s.tup_left in (0, 1)  # after this note no group is open
        return not stable or (new / GRID).denominator == 1

    def _any_fits(self, s: State) -> bool:
        """Some note length fits in state ``s`` (memoised for the last state asked)."""
        src, ok = self._memo_fits
        if src is not s:
            ok = any(self._fits(s, L) for L in LENGTHS)
            self._memo_fits = (s, ok)
        return ok

    def _grow_note(self, s: State, ch: str) -> State | None:
        m = _NOTE_RE.match(s.pend)
        acc, letter, octs, length = m.groups()
        if letter is None:
            return dataclasses.replace(s, pend=s.pend + ch) if ch in "ABCDEFGabcdefg" else None
        if ch in ",'" and not length and letter != "z" and len(octs) < 2 and (ch == "," if letter.isupper() else ch == "'"):
            return dataclasses.replace(s, pend=s.pend + ch)
        if ch in "0123456789/":
            new = (length or "") + ch
            if new in _LEN_PREFIXES and any(L.startswith(new) and self._fits(s, L) for L in LENGTHS):
                return dataclasses.replace(s, pend=s.pend + ch)
        return None

    def _commit_note(self, s: State) -> State | None:
        m = _NOTE_RE.match(s.pend)
        if m is None or m.group(2) is None:
            return None
        length = m.group(4) or ""
        if length not in LENGTHS or not self._fits(s, length):
            return None
        eff = self._effective(s, length)
        tup_left = max(s.tup_left - 1, 0)
        tup_len = (s.tup_len or length) if tup_left else None
        return dataclasses.replace(s, pos=s.pos + eff, pend="", pend_kind="", deco=False, broken=None,
                                   prev_len=None if (s.broken is not None or s.tup_left) else length,
                                   prev_dur=eff, tup_left=tup_left, tup_len=tup_len, ws=0, began=True)

    def _bar_possible(self, s: State, pend: str) -> bool:
        """Some bar line starting with ``pend`` may be committed here."""
        return any(b.startswith(pend) and self._bar_ok(s, b) for b in BARS)

    def _bar_ok(self, s: State, bar: str) -> bool:
        if s.pos == 0 and not s.began and s.bars == 0:
            return bar == "|:"  # an opening repeat before the first note
        if s.pos != s.meter:
            return False  # every bar exactly full
        n = s.bars + 1
        if n >= self.max_bars:
            return bar in ("|]", ":|")
        return bar != "|]" or n >= self.min_bars

    def _commit_bar(self, s: State) -> State | None:
        if s.pend not in BARS or not self._bar_ok(s, s.pend):
            return None
        opening = s.pos == 0 and s.bars == 0 and not s.began
        n = s.bars if opening else s.bars + 1
        ended = not opening and (s.pend == "|]" or n >= self.max_bars)
        return dataclasses.replace(s, pos=Fraction(0), bars=n, pend="", pend_kind="", last_bar=s.pend, ended=ended,
                                   prev_len=None, ws=0)

    def _step_stable(self, s: State, ch: str) -> State | None:
        if s.ended:
            return self.step(s, ch)
        room = s.meter - s.pos
        if ch in "^_=ABCDEFGabcdefgz":
            if ch == "z" and (s.deco or not s.began):  # the first note is a pitch: a tune of rests is no tune
                return None
            if not self._any_fits(s):
                return None
            return dataclasses.replace(s, pend=ch, pend_kind="note", ws=0)
        if s.deco:
            return None  # a decoration must be followed by a note
        if ch == "~":
            return dataclasses.replace(s, deco=True, ws=0) if self._any_fits(s) else None
        if ch in "|:":
            if s.broken is not None or s.tup_left:
                return None
            return dataclasses.replace(s, pend=ch, pend_kind="bar", ws=0) if self._bar_possible(s, ch) else None
        if ch in "><":
            if s.prev_len not in GROUP_LENGTHS or s.broken is not None or s.tup_left or s.pos + s.prev_dur > s.meter:
                return None
            half = s.prev_dur / 2
            # the previous note becomes 3/2 (>) or 1/2 (<) of itself; the next one gets the complement
            pos, mult = (s.pos + half, Fraction(1, 2)) if ch == ">" else (s.pos - half, Fraction(3, 2))
            return dataclasses.replace(s, pos=pos, broken=mult, prev_len=None, ws=0)
        if ch == "(":
            if s.broken is not None or s.tup_left or room < 2 * min(LENGTHS[L] for L in GROUP_LENGTHS):
                return None
            return dataclasses.replace(s, pend="(", pend_kind="tup", prev_len=None, ws=0)
        if ch == " ":
            return dataclasses.replace(s, ws=1) if s.ws == 0 and s.broken is None and s.began else None
        if ch == "\n":
            ok = s.ws == 0 and s.pos == 0 and s.last_bar and s.broken is None and not s.tup_left
            return dataclasses.replace(s, ws=1, last_bar="") if ok else None
        return None

    # ---------------------------------------------------------------- end and completion
    def can_end(self, s: State) -> bool:
        """EOS allowed here: the tune is complete."""
        if s.field < len(self.fields):
            return False
        if s.pend_kind == "bar":
            c = self._commit_bar(s)
            return c is not None and c.ended
        return s.ended

    def completion(self, s: State) -> str:
        """A short text that takes ``s`` to a complete tune (rests fill the bar, then ``|]``); ignores ``min_bars``.

        Used when the token budget runs out: the processor then admits only tokens that spell this text."""
        out = ""
        if s.field < len(self.fields):
            lines = self.lines[s.field]
            out = min((ln for ln in lines if ln.startswith(s.text)), key=len)[len(s.text):]
            out += "".join(min(ls, key=len) for ls in self.lines[s.field + 1:])
            s = self.run(s, out)
        if s.ended:
            return out
        if s.pend_kind == "bar":
            for b in ("|]", ":|"):  # finish the bar line being spelled as an ending when it can be one
                if b.startswith(s.pend) and self._bar_ok(s, b):
                    return out + b[len(s.pend):] + "\n"
            # a non-ending bar line ("||", "|:", "::"): finish and commit it, a bar of rests follows
            b = min((b for b in BARS if b.startswith(s.pend) and self._bar_ok(s, b)), key=len)
            out += b[len(s.pend):]
            s = self._commit_bar(dataclasses.replace(s, pend=b))
        if s.pend_kind == "tup":
            out += "3"
            s = self.run(s, "3")
        if s.pend_kind == "note":
            m = _NOTE_RE.match(s.pend)
            if m.group(2) is None:
                out += "B"
                s = self.run(s, "B")
            length = m.group(4) or ""
            for L in sorted((L for L in LENGTHS if L.startswith(length)), key=len):
                if self._fits(s, L):
                    out += L[len(length):]
                    s = self._commit_note(self.run(s, L[len(length):]) if L != length else s)
                    break
        tail = ""
        while s.deco or s.broken is not None or s.tup_left:  # close a pair / triplet: the shortest note that fits
            note = "B" + next(L for L, _ in sorted(LENGTHS.items(), key=lambda kv: kv[1]) if self._fits(s, L))
            tail += note
            s = self._commit_note(self.run(s, note))
        room = s.meter - s.pos if s.pos > 0 else s.meter  # at a bar start: one whole bar of rests
        for L, v in sorted(LENGTHS.items(), key=lambda kv: -kv[1]):  # greedy rests; all lengths are on the grid
            while v <= room:
                tail += ("z" if s.began or tail else "B") + L  # a tune needs one note (music21 rejects rests only)
                room -= v
        return out + tail + "|]\n"


def token_strings(tokenizer) -> list[str | None]:
    """Text of every vocabulary id as it appears in decoded output (``None`` for special tokens).

    SentencePiece pieces (LLaMA) lose their leading space when converted alone; ``▁`` is put back as a space."""
    special = set(tokenizer.all_special_ids)
    out: list[str | None] = []
    for i in range(len(tokenizer)):
        if i in special:
            out.append(None)
            continue
        piece = tokenizer.convert_ids_to_tokens(i)
        text = tokenizer.convert_tokens_to_string([piece])
        if isinstance(piece, str) and piece.startswith("▁"):
            # every leading "▁" is a space (LLaMA has pieces of 2..16 spaces, "▁▁▁▁" decodes to 4 spaces)
            text = " " * (len(piece) - len(piece.lstrip("▁"))) + text.lstrip(" ")
        m = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece or "")
        if m:  # byte fallback
            b = int(m.group(1), 16)
            text = chr(b) if b < 128 else None
        out.append(text if text else None)
    return out


class _Trie:
    __slots__ = ("children", "ids")

    def __init__(self):
        self.children: dict[str, _Trie] = {}
        self.ids: list[int] = []


class AbcLogitsProcessor:
    """``transformers`` LogitsProcessor: sets the score of every token the ABC automaton rejects to -inf.

    One automaton state per batch row, advanced with the token sampled at the previous step. Call with
    ``input_ids`` [B, T] and ``scores`` [B, V]; returns the masked scores [B, V]. Rows that produced EOS are left
    alone (generate pads them). ``max_new_tokens`` is the budget the forced completion must fit in.

    Stats after generation: ``forced[b]`` tells whether row b ran out of budget and was closed by the completion.
    """

    def __init__(self, tokenizer, automata: list[AbcAutomaton], max_new_tokens: int):
        self.automata = automata
        self.eos = tokenizer.eos_token_id
        self.strings = token_strings(tokenizer)
        self.root = _Trie()
        alphabet = frozenset().union(*(a.alphabet for a in automata))
        for i, t in enumerate(self.strings):
            # only tokens spelled from the automata's alphabet can ever be allowed (LLaMA-2: 797 to 7,227 of 32k)
            if t and alphabet.issuperset(t):
                node = self.root
                for ch in t:
                    node = node.children.setdefault(ch, _Trie())
                node.ids.append(i)
        single = {t for t in self.strings if t and len(t) == 1}
        # the forced completion spells its text one character at a time when no longer token fits: the characters
        # of note lengths, bar lines, rests and the shortest header lines must be single tokens
        need = set("".join(LENGTHS) + "".join(BARS) + "zB\n")
        for a in automata:
            need |= set("".join(min(lines, key=len) for lines in a.lines))
        missing = sorted(need - single)
        if missing:
            raise ValueError(f"tokenizer lacks single-character tokens for {missing!r}; constrained decoding needs them")
        need_min = max(len(a.completion(a.start())) + 1 for a in automata)
        if max_new_tokens < need_min:  # even spelled one character per token, the shortest tune would not fit
            raise ValueError(f"max_new_tokens {max_new_tokens} is too small for constrained decoding: the shortest "
                             f"complete tune needs up to {need_min} tokens")
        self.max_new = max_new_tokens
        self.states: list[State | None] = [a.start() for a in automata]
        self.forced: list[str | None] = [None] * len(automata)
        self.done = [False] * len(automata)
        self.prompt_len: int | None = None
        self._cache: dict[tuple[int, State], torch.Tensor] = {}
        self.vocab = len(self.strings)

    def _allowed(self, b: int, s: State) -> list[int]:
        a = self.automata[b]
        out: list[int] = []
        stack = [(self.root, s)]
        while stack:  # walk the vocabulary trie; a rejected prefix prunes all tokens below it
            node, st = stack.pop()
            for ch, child in node.children.items():
                nxt = a.step(st, ch)
                if nxt is not None:
                    out += child.ids
                    stack.append((child, nxt))
        if a.can_end(s):
            out.append(self.eos)
        return out

    def _prefix_tokens(self, text: str) -> list[int]:
        """Ids of every token whose string is a prefix of ``text`` (the tokens that spell the forced completion):
        one trie path, not a scan of the vocabulary."""
        out: list[int] = []
        node = self.root
        for ch in text:
            node = node.children.get(ch)
            if node is None:
                break
            out += node.ids
        return out

    def _mask(self, b: int, s: State, device) -> torch.Tensor:
        key = (id(self.automata[b]), s)
        m = self._cache.get(key)
        if m is None:
            m = torch.ones(self.vocab, dtype=torch.bool)
            m[self._allowed(b, s)] = False
            if len(self._cache) > 50000:
                self._cache.clear()
            self._cache[key] = m
        return m.to(device)

    def _advance(self, b: int, tok: int) -> None:
        if self.done[b]:
            return
        if tok == self.eos:
            self.done[b] = True
            return
        text = self.strings[tok] if tok < len(self.strings) else None
        if self.forced[b] is not None:
            self.forced[b] = self.forced[b][len(text or ""):]
            return
        s = self.automata[b].run(self.states[b], text or "\x00")
        if s is None:  # cannot happen when the token was sampled from the mask
            log.warning("row %d: token %r rejected by the automaton; closing the tune", b, text)
            self.forced[b] = ""
        self.states[b] = s

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        B, T = input_ids.shape
        if self.prompt_len is None:
            self.prompt_len = T
        elif T > self.prompt_len:
            for b in range(B):
                self._advance(b, int(input_ids[b, -1]))
        left = self.max_new - (T - self.prompt_len)
        for b in range(B):
            if self.done[b]:
                continue
            a, s = self.automata[b], self.states[b]
            if self.forced[b] is None and s is not None:
                comp = a.completion(s)
                if left <= len(comp) + 1 + a.max_completion:
                    self.forced[b] = comp  # budget: spell the completion from now on (+ EOS)
            if self.forced[b] is not None:
                rest = self.forced[b]
                allow = self._prefix_tokens(rest) if rest else [self.eos]
                mask = torch.ones(self.vocab, dtype=torch.bool)
                mask[allow] = False
                mask = mask.to(scores.device)
            else:
                mask = self._mask(b, s, scores.device)
            row = scores[b, : self.vocab]
            scores[b, : self.vocab] = row.masked_fill(mask, float("-inf"))
            if scores.shape[1] > self.vocab:
                scores[b, self.vocab :] = float("-inf")
        return scores
