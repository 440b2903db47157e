"""YuE text tokenizer: a SentencePiece model plus the special tokens of the released multimodal layout.

Behaviour (matches upstream's Megatron-style ``_MMSentencePieceTokenizer.tokenize``):

- The text is split on the registered special strings (``<SOA>``, ``<EOA>``, ``<EOD>``, ``<xcodec>``, ``<stage_1>``,
  ``<s>``...); the pieces between them are SentencePiece-encoded, each with its own dummy "▁" prefix, and every
  special string becomes its single id.
- A BOS is **never** added.
- ``[start_of_segment]``, ``[end_of_segment]``, ``[start_of_reference]``, ``[end_of_reference]`` are ordinary text
  (7 SP tokens each). Sequence builders call :meth:`YuETokenizer.tokenize` once per marker / section / head, as
  upstream does: joining the strings first gives different ids.

Special-token ids come from a :class:`TokenLayout` (the released one by default, or a ``layout.json`` next to a
small test tokenizer); no id is hard-coded in the logic.

The released model is found through ``$YUE_TOKENIZER`` or :func:`find_released_tokenizer`; it is never bundled.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from yue.codec_ids import CodecIdLayout

__all__ = [
    "TokenizerError",
    "TokenLayout",
    "SPECIAL_TOKEN_NAMES",
    "WRAPPER_TOKEN_NAMES",
    "YuETokenizer",
    "find_released_tokenizer",
    "train_tiny_tokenizer",
]

#: Special strings of the released layout, in id order (released ids 32000..32021).
SPECIAL_TOKEN_NAMES = (
    "<EOD>", "<SOA>", "<EOA>", "<SOI>", "<EOI>", "<SOV>", "<EOV>", "<s_local>", "<e_local>", "<s_global>",
    "<e_global>", "<semantic>", "<acoustic>", "<stage_1>", "<dac_16k>", "<dac_44k>", "<xcodec>", "<stage_2>",
    "<semantic_mert>", "<semantic_hubert>", "<visual>", "<semanticodec>",
)  # fmt: skip
#: Tokens the Megatron wrapper appends after the SentencePiece vocabulary (released ids 83734..83737).
WRAPPER_TOKEN_NAMES = ("<CLS>", "<SEP>", "<MASK>", "<PAD>")

ENV_VAR = "YUE_TOKENIZER"


class TokenizerError(ValueError):
    """Missing/corrupt tokenizer file, or a layout that does not fit the SentencePiece model."""


@dataclass
class TokenLayout:
    """Vocabulary layout around the SentencePiece model.

    Attributes:
        special_tokens: special string -> id (released: ``<EOD>`` 32000 ... ``<semanticodec>`` 32021, plus ``<s>`` 1
            and ``</s>`` 2). Strings present as SP pieces must carry the same id there.
        wrapper_tokens: ``<CLS> <SEP> <MASK> <PAD>`` ids appended after the SP vocabulary (released 83734..83737).
        sp_vocab_size: pieces in the SentencePiece model (released 83734).
        xcodec: where the X-Codec codes live (released: 45334 + 1024 k + c, 12 codebooks).
        model_vocab_size: rows of the LM embedding (released checkpoints: 83968, padded; ids >= ``vocab_size`` are
            never valid).
    """

    special_tokens: dict[str, int] = field(default_factory=dict)
    wrapper_tokens: dict[str, int] = field(default_factory=dict)
    sp_vocab_size: int = 83734
    xcodec: CodecIdLayout = field(default_factory=CodecIdLayout)
    model_vocab_size: int = 83968

    @classmethod
    def released(cls) -> "TokenLayout":
        """The layout of ``mm_tokenizer_v0.2_hf`` (checked against the released model in the tests)."""
        specials = {name: 32000 + i for i, name in enumerate(SPECIAL_TOKEN_NAMES)}
        specials.update({"<s>": 1, "</s>": 2})
        wrappers = {name: 83734 + i for i, name in enumerate(WRAPPER_TOKEN_NAMES)}
        return cls(specials, wrappers, 83734, CodecIdLayout(45334, 1024, 12), 83968)

    @property
    def vocab_size(self) -> int:
        """Valid ids: ``0 .. vocab_size-1`` (released: 83738)."""
        return max([self.sp_vocab_size, self.xcodec.end, *(v + 1 for v in self.special_tokens.values()),
                    *(v + 1 for v in self.wrapper_tokens.values())])  # fmt: skip

    def id(self, name: str) -> int:
        """Id of a special or wrapper token (``layout.id("<SOA>")``)."""
        if name in self.special_tokens:
            return self.special_tokens[name]
        if name in self.wrapper_tokens:
            return self.wrapper_tokens[name]
        raise TokenizerError(f"unknown special token {name!r}")

    def to_json(self) -> dict:
        d = asdict(self)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "TokenLayout":
        d = dict(d)
        d["xcodec"] = CodecIdLayout(**d["xcodec"])
        return cls(**d)


def find_released_tokenizer() -> Path | None:
    """Path of the released ``tokenizer.model``: ``$YUE_TOKENIZER``, else the shared assets folder; None if absent."""
    env = os.environ.get(ENV_VAR)
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    for parent in here.parents:  # the handbook lives beside the monorepo: <root>/../shared/assets/yue
        candidates.append(parent / "shared" / "assets" / "yue" / "tokenizer.model")
    for c in candidates:
        if c.is_file():
            return c
    return None


class YuETokenizer:
    """SentencePiece + special strings; ``tokenize`` never adds BOS/EOS.

    Args:
        model_file: the SentencePiece ``.model`` file.
        layout: special-token ids; default: ``layout.json`` beside the model if present, else the released layout.
    """

    def __init__(self, model_file: str | os.PathLike, layout: TokenLayout | None = None):
        import sentencepiece as spm

        path = Path(model_file)
        if not path.is_file():
            raise TokenizerError(f"{path}: tokenizer model not found (set ${ENV_VAR} or pass a path)")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(path))
        except (RuntimeError, OSError) as e:
            raise TokenizerError(f"{path}: not a SentencePiece model: {e}") from e
        if layout is None:
            side = path.with_name("layout.json")
            layout = TokenLayout.from_json(json.loads(side.read_text())) if side.is_file() else TokenLayout.released()
        self.path = path
        self.layout = layout
        self._check_layout()
        # longest first, so a special string that contains another one wins at the same position
        self._specials = sorted({**layout.special_tokens, **layout.wrapper_tokens}.items(), key=lambda kv: -len(kv[0]))
        self._id_to_special = {v: k for k, v in self._specials}

    def _check_layout(self) -> None:
        n = self.sp.get_piece_size()
        if n != self.layout.sp_vocab_size:
            raise TokenizerError(f"{self.path}: {n} pieces, but the layout expects sp_vocab_size={self.layout.sp_vocab_size}")
        for name, i in self.layout.special_tokens.items():
            pid = self.sp.piece_to_id(name)
            present = pid != self.sp.unk_id() or name == self.sp.id_to_piece(self.sp.unk_id())
            if present and pid != i:
                raise TokenizerError(f"{self.path}: piece {name!r} has id {pid}, layout says {i}")
            if not present and i < n:
                raise TokenizerError(f"{self.path}: layout puts {name!r} at {i}, inside the SP vocabulary")

    # ---- encoding -------------------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Ids of ``text``: SP pieces between special strings, one id per special string. No BOS."""
        if not isinstance(text, str):
            raise TokenizerError(f"tokenize expects a str, got {type(text).__name__}")
        ids: list[int] = []
        pos = 0
        while True:
            best = None  # (index, string, id) of the earliest special string from pos
            for s, i in self._specials:
                j = text.find(s, pos)
                if j >= 0 and (best is None or j < best[0]):
                    best = (j, s, i)
            if best is None:
                break
            j, s, i = best
            if j > pos:
                ids.extend(self.sp.encode(text[pos:j]))
            ids.append(i)
            pos = j + len(s)
        if pos < len(text):
            ids.extend(self.sp.encode(text[pos:]))
        return ids

    def tokenize_many(self, texts: Iterable[str]) -> list[int]:
        """Concatenation of separate :meth:`tokenize` calls (how upstream builds every prompt)."""
        out: list[int] = []
        for t in texts:
            out.extend(self.tokenize(t))
        return out

    # ---- decoding -------------------------------------------------------------------------------------------
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids: SP runs decoded (dummy prefix removed per run), special ids as their strings.

        Codec ids are rendered as ``<xcodec/k/c>``; ids outside the vocabulary raise :class:`TokenizerError`.
        """
        out: list[str] = []
        run: list[int] = []
        n = self.sp.get_piece_size()
        xc = self.layout.xcodec

        def flush():
            if run:
                out.append(self.sp.decode(run))
                run.clear()

        for i in ids:
            i = int(i)
            if i in self._id_to_special:  # special strings (incl. <s>/</s>) print as themselves
                flush()
                out.append(self._id_to_special[i])
            elif xc.global_offset <= i < xc.end:
                flush()
                k, c = divmod(i - xc.global_offset, xc.codebook_size)
                out.append(f"<xcodec/{k}/{c}>")
            elif 0 <= i < n:
                run.append(i)
            else:
                raise TokenizerError(f"id {i} is outside the vocabulary (0..{self.layout.vocab_size - 1})")
        flush()
        return "".join(out)

    def decode_text(self, ids: Sequence[int]) -> str:
        """Decode ids that must all be SentencePiece text pieces (one ``tokenize`` call's worth)."""
        n = self.sp.get_piece_size()
        bad = [int(i) for i in ids if not 0 <= int(i) < n or int(i) in self._id_to_special]
        if bad:
            raise TokenizerError(f"ids {bad[:5]} are not text pieces")
        return self.sp.decode([int(i) for i in ids])

    def id(self, name: str) -> int:
        return self.layout.id(name)

    @property
    def vocab_size(self) -> int:
        return self.layout.vocab_size


# ---- a small tokenizer with the same layout, for tests and the demo ------------------------------------------
_TINY_CORPUS = (
    "Generate music from the given lyrics segment by segment.",
    "[Genre] pop rock folk electronic jazz male female vocal piano guitar drums bass synth uplifting sad bright",
    "[verse]", "[chorus]", "[bridge]", "[intro]", "[outro]", "[inst]",
    "[start_of_segment]", "[end_of_segment]", "[start_of_reference]", "[end_of_reference]",
    "la la la the night is long and the road goes on",
    "sing with me under the silver moon tonight",
    "hold on hold on we will find the way back home",
)  # fmt: skip


def train_tiny_tokenizer(
    out_dir: str | os.PathLike,
    texts: Iterable[str] = (),
    vocab_size: int = 400,
    codebook_size: int = 1024,
    num_codebooks: int = 12,
) -> Path:
    """Train a small byte-fallback BPE SentencePiece model and write ``tokenizer.model`` + ``layout.json``.

    The special strings get ids right after the SP pieces (in :data:`SPECIAL_TOKEN_NAMES` order), then the X-Codec
    block, then the wrapper tokens, so the *shape* of the released layout is kept with small ids. ``<s>``/``</s>``
    keep the SP ids 1/2 as in the released model.

    Returns:
        Path of ``tokenizer.model`` (``YuETokenizer(path)`` picks up ``layout.json``).
    """
    import io

    import sentencepiece as spm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = [t for t in list(_TINY_CORPUS) + [str(t) for t in texts] if t.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus * 4),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        hard_vocab_limit=False,
        bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )  # fmt: skip
    from musiccore.runs import atomic_path, atomic_write_json

    model_path = out / "tokenizer.model"
    with atomic_path(model_path) as tmp:
        Path(tmp).write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    n = sp.get_piece_size()
    specials = {name: n + i for i, name in enumerate(SPECIAL_TOKEN_NAMES)}
    specials.update({"<s>": 1, "</s>": 2})
    codec = CodecIdLayout(n + len(SPECIAL_TOKEN_NAMES), codebook_size, num_codebooks)
    wrappers = {name: codec.end + i for i, name in enumerate(WRAPPER_TOKEN_NAMES)}
    layout = TokenLayout(specials, wrappers, n, codec, codec.end + len(WRAPPER_TOKEN_NAMES))
    atomic_write_json(out / "layout.json", layout.to_json())
    return model_path
