"""Codec token ids: X-Codec codes <-> LM vocabulary ids (the released ``CodecManipulator("xcodec", ...)`` layout).

A code ``c`` of codebook ``k`` maps to the id ``global_offset + codebook_size * k + c`` (released: 45334 + 1024 k + c).
Several codebooks are flattened frame-major (``'K T -> (T K)'``): ``c0_t0 c1_t0 ... cK-1_t0 c0_t1 ...``.

Every function validates its input and raises :class:`CodecIdError` (a ``ValueError``) naming what is out of range,
instead of silently producing ids of another codebook or of the text vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CodecIdError", "CodecIdLayout", "RELEASED_XCODEC"]


class CodecIdError(ValueError):
    """Codes or ids outside the range a codebook (or the layout) allows."""


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
        if self.global_offset < 0 or self.codebook_size < 1 or self.num_codebooks < 1:
            raise CodecIdError(f"invalid codec id layout {self}")

    # ---- ranges ---------------------------------------------------------------------------------------------
    def offset(self, k: int) -> int:
        """First id of codebook ``k``."""
        if not 0 <= k < self.num_codebooks:
            raise CodecIdError(f"codebook {k} outside 0..{self.num_codebooks - 1}")
        return self.global_offset + self.codebook_size * k

    def id_range(self, begin: int = 0, n: int = 1) -> tuple[int, int]:
        """Half-open id range ``[lo, hi)`` covering codebooks ``begin .. begin+n-1`` (stage 1: (45334, 46358))."""
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
        arr = np.asarray(codes)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2:
            raise CodecIdError(f"{what}: expected [K, T] codes, got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.equal(np.mod(arr, 1), 0)):
                raise CodecIdError(f"{what}: codes must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
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
            CodecIdError: wrong length, or (strict) an id outside the range of its frame position.
        """
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        self.id_range(begin, n)  # validates begin/n
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
        """Boolean mask: which ids fall in codebooks ``begin..begin+n-1`` (all codebooks when ``n`` is None)."""
        lo, hi = self.id_range(begin, self.num_codebooks - begin if n is None else n)
        a = np.asarray(ids, dtype=np.int64)
        return (a >= lo) & (a < hi)


#: The released X-Codec layout of YuE (``mm_tokenizer_v0.2_hf``): 12 codebooks x 1024 from id 45334.
RELEASED_XCODEC = CodecIdLayout(45334, 1024, 12)


def repair_codes(codes: np.ndarray, codebook_size: int = 1024) -> np.ndarray:
    """Upstream's stage-2 "dirty fix": replace each out-of-range value of a row by that row's most frequent code.

    Args:
        codes: ``[K, T]`` integer codes, possibly holding -1 or values >= codebook_size.

    Returns:
        ``[K, T]`` int64 codes, every value in ``0..codebook_size-1`` (a row with no valid value becomes 0).
    """
    arr = np.array(codes, dtype=np.int64, copy=True)
    if arr.ndim == 1:
        arr = arr[None]
    for row in arr:  # per codebook: the mode of the valid codes replaces the invalid ones
        bad = (row < 0) | (row >= codebook_size)
        if bad.any():
            good = row[~bad]
            row[bad] = np.bincount(good, minlength=1).argmax() if good.size else 0
    return arr
