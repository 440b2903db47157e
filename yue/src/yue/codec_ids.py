"""Codec token ids: X-Codec codes <-> LM vocabulary ids (the released ``CodecManipulator("xcodec", ...)`` layout).

A code ``c`` of codebook ``k`` maps to the id ``global_offset + codebook_size * k + c`` (released: 45334 + 1024 k + c).
Several codebooks are flattened frame-major (``'K T -> (T K)'``): ``c0_t0 c1_t0 ... cK-1_t0 c0_t1 ...``.

Every function validates its input and raises :class:`CodecIdError` (a ``ValueError``) naming what is out of range,
instead of silently producing ids of another codebook or of the text vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CodecIdError", "CodecIdLayout", "RELEASED_XCODEC", "as_int_array", "read_codes_npy"]

_INT64_MAX = np.iinfo(np.int64).max


class CodecIdError(ValueError):
    """Codes or ids outside the range a codebook (or the layout) allows, or values that are not integers."""


def _as_index(value, name: str) -> int:
    """A Python ``int`` from an integer-like scalar (not bool, not float); :class:`CodecIdError` otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise CodecIdError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    return int(value)


def as_int_array(values, what: str = "codes") -> np.ndarray:
    """``values`` (any array-like) as an int64 array of the same shape, or :class:`CodecIdError` saying why not.

    Accepted: integer dtypes whose values fit in int64, and floats whose values are all finite whole numbers
    (``3.0``; e.g. codes saved as float32). Refused: fractional or non-finite floats (never truncated silently),
    booleans, strings, complex numbers, ``None`` and other objects, ragged nesting, and integers beyond int64.
    """
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError, OverflowError) as e:  # ragged lists, unconvertible objects
        raise CodecIdError(f"{what}: not an array of integers ({e})") from None
    kind = arr.dtype.kind
    if kind == "O":  # Python ints too large for int64, None, mixed objects: check each element
        flat = arr.reshape(-1)
        out = np.empty(flat.shape, np.int64)
        for j, v in enumerate(flat):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer, float, np.floating)):
                raise CodecIdError(f"{what}: element {j} is {v!r} ({type(v).__name__}), not an integer")
            if isinstance(v, (float, np.floating)) and not (np.isfinite(v) and float(v).is_integer()):
                raise CodecIdError(f"{what}: element {j} is {v!r}, not a whole number")
            if not -_INT64_MAX - 1 <= int(v) <= _INT64_MAX:
                raise CodecIdError(f"{what}: element {j} = {int(v)} does not fit in int64")
            out[j] = int(v)
        return out.reshape(arr.shape)
    if kind in "iu":
        if kind == "u" and arr.size and arr.dtype.itemsize == 8 and int(arr.max()) > _INT64_MAX:
            raise CodecIdError(f"{what}: value {int(arr.max())} does not fit in int64")
        return arr.astype(np.int64)
    if kind == "f":
        if arr.size:
            finite = np.isfinite(arr)
            if not finite.all():
                j = int(np.flatnonzero(~finite.reshape(-1))[0])
                raise CodecIdError(f"{what}: non-finite value {arr.reshape(-1)[j].item()} at flat index {j}")
            frac = np.mod(arr, 1) != 0
            if frac.any():
                j = int(np.flatnonzero(frac.reshape(-1))[0])
                raise CodecIdError(
                    f"{what}: fractional value {arr.reshape(-1)[j].item()!r} at flat index {j} ({int(frac.sum())} values); "
                    "values must be whole numbers (refusing to truncate them)"
                )
            big = np.abs(arr) >= 2.0**63
            if big.any():
                raise CodecIdError(f"{what}: value {arr[big].reshape(-1)[0].item()!r} does not fit in int64")
        return arr.astype(np.int64)
    raise CodecIdError(f"{what}: values must be integers, got dtype {arr.dtype}")


def read_codes_npy(path, num_codebooks: int = 12, codebook_size: int = 1024) -> np.ndarray:
    """Read one clip's codes from a ``.npy`` file -> int64 ``[K, T]`` with ``1 <= K <= num_codebooks``, ``T >= 1``.

    ``[1, K, T]`` (one clip with a batch axis, as ``XCodec.encode`` returns) is accepted; ``[B, K, T]`` with
    ``B > 1`` is refused (one clip per file, so one output per input); so is ``[T]`` (write ``[1, T]`` for
    codebook 0 alone). Never unpickles (``allow_pickle=False``).

    Raises:
        CodecIdError: naming ``path`` and the reason: missing, zero-byte or unreadable file, object arrays, a wrong
            number of dimensions, several clips, no frames, too many codebooks, non-integer values (see
            :func:`as_int_array`), or a code outside ``0..codebook_size-1`` (with its codebook and frame).
    """
    from pathlib import Path

    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise CodecIdError(f"{p}: cannot read ({e.strerror or e})") from None
    if size == 0:
        raise CodecIdError(f"{p}: empty file (0 bytes), not a .npy array")
    try:
        raw = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # bad magic, truncated data, object arrays (would need pickle)
        raise CodecIdError(f"{p}: not a readable .npy array ({type(e).__name__}: {str(e)[:160]})") from None
    if not isinstance(raw, np.ndarray):  # an .npz archive behind a .npy name
        raise CodecIdError(f"{p}: holds an .npz archive, not one [K, T] array")
    arr = raw
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3:
        raise CodecIdError(
            f"{p}: holds {arr.shape[0]} clips {list(arr.shape)}; save one [K, T] array per file (one output each)"
        )
    if arr.ndim != 2:
        hint = " (codebook 0 alone is [1, T])" if arr.ndim == 1 else ""
        raise CodecIdError(f"{p}: expected [K, T] codes, got shape {list(raw.shape)}{hint}")
    k, t = arr.shape
    if t == 0:
        raise CodecIdError(f"{p}: no frames (shape {list(raw.shape)})")
    if not 1 <= k <= num_codebooks:
        raise CodecIdError(f"{p}: {k} codebooks; this codec has 1..{num_codebooks} (shape {list(raw.shape)})")
    codes = as_int_array(arr, str(p))
    bad = (codes < 0) | (codes >= codebook_size)
    if bad.any():
        kk, tt = np.argwhere(bad)[0]
        raise CodecIdError(
            f"{p}: code {int(codes[kk, tt])} at codebook {kk}, frame {tt} is outside 0..{codebook_size - 1} "
            f"({int(bad.sum())} bad values)"
        )
    return codes


@dataclass(frozen=True)
class CodecIdLayout:
    """Where the codes of one codec live in the LM vocabulary.

    Attributes:
        global_offset: id of code 0 of codebook 0 (released X-Codec: 45334).
        codebook_size: codes per codebook (1024).
        num_codebooks: codebooks the vocabulary reserves (12 for X-Codec; stage 2 uses 8, stage 1 uses 1).
    """

    global_offset: int = 45334
    codebook_size: int = 1024
    num_codebooks: int = 12

    def __post_init__(self):
        for name in ("global_offset", "codebook_size", "num_codebooks"):
            _as_index(getattr(self, name), f"CodecIdLayout.{name}")
        if self.global_offset < 0 or self.codebook_size < 1 or self.num_codebooks < 1:
            raise CodecIdError(f"invalid codec id layout {self}")
        if self.end > 2**62:  # ids are int64 arrays; keep every id (and id + offset arithmetic) representable
            raise CodecIdError(f"codec id layout {self} ends at id {self.end}, beyond int64 ids")

    # ---- ranges ---------------------------------------------------------------------------------------------
    def offset(self, k: int) -> int:
        """First id of codebook ``k``."""
        k = _as_index(k, "codebook")
        if not 0 <= k < self.num_codebooks:
            raise CodecIdError(f"codebook {k} outside 0..{self.num_codebooks - 1}")
        return self.global_offset + self.codebook_size * k

    def id_range(self, begin: int = 0, n: int = 1) -> tuple[int, int]:
        """Half-open id range ``[lo, hi)`` covering codebooks ``begin .. begin+n-1`` (stage 1: (45334, 46358))."""
        begin, n = _as_index(begin, "begin"), _as_index(n, "n")
        if n < 1 or begin < 0 or begin + n > self.num_codebooks:
            raise CodecIdError(f"codebooks {begin}..{begin + n - 1} outside 0..{self.num_codebooks - 1}")
        return self.offset(begin), self.offset(begin) + n * self.codebook_size

    @property
    def end(self) -> int:
        """One past the last codec id of the layout."""
        return self.global_offset + self.codebook_size * self.num_codebooks

    # ---- codes -> ids ---------------------------------------------------------------------------------------
    def check_codes(self, codes: np.ndarray, begin: int = 0, what: str = "codes") -> np.ndarray:
        """Return ``codes`` as int64 ``[K, T]`` after checking shape and value range (``0 <= c < codebook_size``)."""
        arr = as_int_array(codes, what)
        begin = _as_index(begin, "begin")
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2:
            raise CodecIdError(f"{what}: expected [K, T] codes, got shape {arr.shape}")
        k = arr.shape[0]
        if begin < 0 or begin + k > self.num_codebooks:
            raise CodecIdError(
                f"{what}: {k} codebooks starting at {begin} exceed the layout's {self.num_codebooks} codebooks"
            )
        bad = (arr < 0) | (arr >= self.codebook_size)
        if bad.any():
            kk, tt = np.argwhere(bad)[0]
            raise CodecIdError(
                f"{what}: code {int(arr[kk, tt])} at codebook {begin + kk}, frame {tt} is outside "
                f"0..{self.codebook_size - 1} ({int(bad.sum())} bad values)"
            )
        return arr

    def codes_to_ids(self, codes: np.ndarray, begin: int = 0) -> np.ndarray:
        """``[K, T]`` codes of codebooks ``begin..begin+K-1`` -> frame-major flat ids ``[T*K]`` (``npy2ids``)."""
        arr = self.check_codes(codes, begin)
        k = arr.shape[0]
        offsets = self.global_offset + self.codebook_size * (begin + np.arange(k, dtype=np.int64))
        return (arr + offsets[:, None]).T.reshape(-1)

    # ---- ids -> codes ---------------------------------------------------------------------------------------
    def ids_to_codes(self, ids, n: int = 1, begin: int = 0, strict: bool = True) -> np.ndarray:
        """Inverse of :meth:`codes_to_ids`: flat frame-major ids -> ``[n, T]`` codes (``ids2npy``).

        Args:
            ids: flat id sequence; its length must be a multiple of ``n``.
            n / begin: number of codebooks per frame and the first codebook (position ``j`` of a frame must hold
                an id of codebook ``begin + j``).
            strict: raise on any id outside its codebook; with ``strict=False`` such ids become -1 (the caller
                decides how to repair them, e.g. :func:`repair_codes`).

        Raises:
            CodecIdError: wrong length, ids that are not integers (fractional, non-finite, strings, beyond int64),
                bad ``n``/``begin``, or (strict) an id outside the range of its frame position.
        """
        arr = as_int_array(ids, "ids").reshape(-1)
        self.id_range(begin, n)  # validates begin/n (integers, inside the layout)
        begin, n = int(begin), int(n)
        if arr.size % n:
            raise CodecIdError(f"{arr.size} ids is not a multiple of {n} codebooks per frame")
        frames = arr.reshape(-1, n).T  # [n, T]
        offsets = self.global_offset + self.codebook_size * (begin + np.arange(n, dtype=np.int64))
        codes = frames - offsets[:, None]
        bad = (codes < 0) | (codes >= self.codebook_size)
        if bad.any():
            if strict:
                kk, tt = np.argwhere(bad)[0]
                raise CodecIdError(
                    f"id {int(frames[kk, tt])} at frame {tt}, position {kk} is not a code of codebook {begin + kk} "
                    f"(expected {offsets[kk]}..{offsets[kk] + self.codebook_size - 1}; {int(bad.sum())} bad ids)"
                )
            codes = np.where(bad, -1, codes)
        return codes

    def is_codec_id(self, ids, begin: int = 0, n: int | None = None) -> np.ndarray:
        """Boolean mask: which ids fall in codebooks ``begin..begin+n-1`` (all codebooks when ``n`` is None).

        Raises:
            CodecIdError: ids that are not integers (see :func:`as_int_array`), bad ``begin``/``n``.
        """
        begin = _as_index(begin, "begin")
        lo, hi = self.id_range(begin, self.num_codebooks - begin if n is None else n)
        a = as_int_array(ids, "ids")
        return (a >= lo) & (a < hi)


#: The released X-Codec layout of YuE (``mm_tokenizer_v0.2_hf``): 12 codebooks x 1024 from id 45334.
RELEASED_XCODEC = CodecIdLayout(45334, 1024, 12)


def repair_codes(codes: np.ndarray, codebook_size: int = 1024) -> np.ndarray:
    """Upstream's stage-2 "dirty fix": replace each out-of-range value of a row by that row's most frequent code.

    Args:
        codes: ``[K, T]`` (or ``[T]``) integer codes, possibly holding -1 or values >= codebook_size.

    Returns:
        ``[K, T]`` int64 codes, every value in ``0..codebook_size-1`` (a row with no valid value becomes 0).

    Raises:
        CodecIdError: values that are not integers (fractional/NaN floats are refused, not truncated; see
            :func:`as_int_array`), a shape other than ``[T]``/``[K, T]``, or ``codebook_size < 1``.
    """
    codebook_size = _as_index(codebook_size, "codebook_size")
    if codebook_size < 1:
        raise CodecIdError(f"codebook_size must be >= 1, got {codebook_size}")
    arr = as_int_array(codes, "codes").copy()
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise CodecIdError(f"codes: expected [K, T] codes, got shape {arr.shape}")
    for row in arr:  # per codebook: the mode of the valid codes replaces the invalid ones
        bad = (row < 0) | (row >= codebook_size)
        if bad.any():
            good = row[~bad]
            row[bad] = np.bincount(good, minlength=1).argmax() if good.size else 0
    return arr
