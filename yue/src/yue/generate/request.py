"""What a user asks for (genre, lyrics, sections, ICL prompt, tracks, seed) and its checks.

Every check here runs **before any model is loaded** (it needs only the tokenizer, the stage-1 ``config.json`` and
``soundfile``'s header reader) and raises :class:`GenerateInputError` naming the field/file and the reason:

- empty lyrics, lyrics without section labels, malformed/unknown labels (``yue.lyrics.split_lyrics``);
- tag words outside the released ``top_200_tags.json`` (a warning, or an error with ``unknown_tags: error``);
- an audio prompt window shorter than one codec frame (20 ms), reversed, negative, or past the end of its file;
- lyrics too long for the stage-1 context at the requested number of sections (head + ICL block + the longest
  section prompt + ``max_new_tokens`` + 1 must fit: older sections can be dropped, the head cannot).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from yue.lyrics import LyricsError, Section, split_lyrics

log = logging.getLogger(__name__)

__all__ = ["GenerateInputError", "AudioPrompt", "SongRequest", "find_released_tags", "load_tags", "check_tags",
           "read_genre", "check_prompt_window", "read_requests"]  # fmt: skip

FRAME_RATE = 50  # X-Codec frames per second
TRACKS = ("both", "instrumental", "vocal")


class GenerateInputError(ValueError):
    """A request that cannot be generated (empty lyrics, bad prompt window, too long for the context...)."""


@dataclass
class AudioPrompt:
    """ICL reference audio.

    Attributes:
        paths: one file (``single``: a mix or one stem, 1 id per frame) or two (``dual``: vocal then instrumental,
            interleaved, 2 ids per frame).
        start / end: window in seconds (released defaults 0 and 30); cropped after encoding the whole file, as
            upstream does (dual ``[start*100 : end*100]`` of the interleaved ids, single ``[start*50 : end*50]``).
    """

    paths: list[str]
    start: float = 0.0
    end: float = 30.0

    @property
    def mode(self) -> str:
        return "dual" if len(self.paths) == 2 else "single"

    def frames(self) -> int:
        """Codec frames of the window (``int(end*50) - int(start*50)``, as the released crop)."""
        return int(self.end * FRAME_RATE) - int(self.start * FRAME_RATE)

    def to_json(self) -> dict:
        return {"paths": list(self.paths), "start": self.start, "end": self.end, "mode": self.mode}


@dataclass
class SongRequest:
    """One song to generate.

    Attributes:
        genre: tags (one line, space-separated as the README recommends), or a path to a text file holding them.
        lyrics: labelled lyrics (``[verse]\\n...``), or a path to a text file holding them.
        n_sections: generate the first N sections (``None`` = all). Every requested section is generated (upstream
            generates one fewer, spec §10.5).
        audio_prompt: optional ICL reference (needs an ``-icl`` stage-1 checkpoint).
        tracks: ``both``; ``instrumental`` = only the accompaniment: the vocal positions of stage 1 are forced to the
            codec's codebook-0 code of digital silence, stage 2 runs on the instrumental track only and no vocal
            files are written; ``vocal`` = the same with the roles swapped (a cappella).
        seed: sampling seed (each section and each stage-2 batch derives its own generator from it, so a resumed run
            draws the same numbers as an uninterrupted one).
        id: name of the output folder in batch mode.
    """

    genre: str
    lyrics: str
    n_sections: int | None = None
    audio_prompt: AudioPrompt | None = None
    tracks: str = "both"
    seed: int = 42
    id: str | None = None

    @classmethod
    def from_json(cls, d: dict, where: str = "request") -> "SongRequest":
        if not isinstance(d, dict):
            raise GenerateInputError(f"{where}: expected a JSON object, got {type(d).__name__}")
        known = {"genre", "lyrics", "n_sections", "sections", "audio_prompt", "tracks", "seed", "id"}
        extra = set(d) - known
        if extra:
            raise GenerateInputError(f"{where}: unknown keys {sorted(extra)} (known: {sorted(known)})")
        for key in ("genre", "lyrics"):
            if not isinstance(d.get(key), str):
                raise GenerateInputError(f"{where}: field '{key}' must be a string")
        ap = d.get("audio_prompt")
        prompt = None
        if ap is not None:
            if not isinstance(ap, dict) or not isinstance(ap.get("paths"), list):
                raise GenerateInputError(f"{where}: audio_prompt must be {{paths: [...], start, end}}")
            prompt = AudioPrompt([str(p) for p in ap["paths"]], float(ap.get("start", 0.0)), float(ap.get("end", 30.0)))
        n = d.get("n_sections", d.get("sections"))
        return cls(d["genre"], d["lyrics"], None if n is None else int(n), prompt, d.get("tracks", "both"),
                   int(d.get("seed", 42)), d.get("id"))  # fmt: skip

    def to_json(self) -> dict:
        d = asdict(self)
        d["audio_prompt"] = self.audio_prompt.to_json() if self.audio_prompt else None
        return d


# ---- tags -------------------------------------------------------------------------------------------------------
TAGS_ENV = "YUE_TAGS"


def find_released_tags() -> Path | None:
    """The released ``top_200_tags.json``: ``$YUE_TAGS``, else ``<parent>/shared/assets/yue/`` above this file."""
    env = os.environ.get(TAGS_ENV)
    candidates = [Path(env)] if env else []
    for parent in Path(__file__).resolve().parents:
        candidates.append(parent / "shared" / "assets" / "yue" / "top_200_tags.json")
    return next((c for c in candidates if c.is_file()), None)


def load_tags(path: str | os.PathLike | None = None) -> set[str] | None:
    """Lower-cased known tag words: every tag of every category, and every word of a multi-word tag."""
    p = Path(path) if path else find_released_tags()
    if p is None:
        return None
    try:
        data = json.loads(Path(p).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GenerateInputError(f"{p}: unreadable tags file ({e})") from e
    words: set[str] = set()
    for tags in (data.values() if isinstance(data, dict) else [data]):
        for t in tags:
            t = str(t).strip().lower()
            words.add(t)
            words.update(w for w in re.split(r"[\s,]+", t) if w)
    return words


def check_tags(genre: str, policy: str = "warn", known: set[str] | None = None) -> list[str]:
    """Tag words of ``genre`` that the released tag list lacks; a warning (``warn``) or an error (``error``).

    Returns:
        The unknown words (empty when all are known or when no tag list is available).
    """
    if known is None:
        known = load_tags()
        if known is None:
            log.warning("top_200_tags.json not found (set $%s): tags are not checked", TAGS_ENV)
            return []
    words = [w for w in re.split(r"[\s,]+", genre.strip()) if w]
    unknown = [w for w in words if w.lower() not in known]
    if unknown:
        msg = f"genre: tag words not in the released top_200_tags.json: {unknown}"
        if policy == "error":
            raise GenerateInputError(msg + " (unknown_tags: error; use 'warn' to allow free-form tags)")
        log.warning("%s (the model sees them as plain text)", msg)
    return unknown


def read_genre(value: str) -> str:
    """Tags from a string, or from a file when ``value`` names one (newlines become spaces)."""
    p = Path(value)
    if len(value) < 4096 and "\n" not in value and p.is_file():
        value = p.read_text(encoding="utf-8")
    tags = " ".join(value.split())
    if not tags:
        raise GenerateInputError("genre: no tags given")
    return tags


def read_lyrics(value: str) -> tuple[str, str]:
    """``(lyrics text, source name)``; ``value`` may be a path to a file.

    Raises:
        GenerateInputError: ``value`` is not a string; or it is one line without ``[`` that names a folder, an
            unreadable or non-UTF-8 file, or a missing file (it ends in ``.txt``/``.lrc``/``.md`` or holds a path
            separator), instead of being taken as lyrics text without labels.
    """
    if not isinstance(value, str):
        raise GenerateInputError(f"lyrics must be text or a file path, got {type(value).__name__}")
    p = Path(value)
    if value.strip() and len(value) < 4096 and "\n" not in value and "[" not in value:
        if p.is_dir():
            raise GenerateInputError(f"{p}: the lyrics path is a folder, not a text file")
        if p.is_file():
            try:
                return p.read_text(encoding="utf-8"), str(p)
            except UnicodeDecodeError as e:
                raise GenerateInputError(f"{p}: the lyrics file is not UTF-8 text ({e.reason} at byte {e.start})") from None
            except OSError as e:
                raise GenerateInputError(f"{p}: cannot read the lyrics file ({e.strerror or e})") from None
        if p.suffix.lower() in (".txt", ".lrc", ".md") or os.sep in value:
            raise GenerateInputError(f"{p}: lyrics file not found (lyrics given as text need labels like [verse])")
    return value, "lyrics"


def parse_sections(req: SongRequest) -> list[Section]:
    """The labelled sections of the request; :class:`GenerateInputError` for empty/unlabelled lyrics."""
    text, source = read_lyrics(req.lyrics)
    try:
        sections = split_lyrics(text, source=source)
    except LyricsError as e:
        raise GenerateInputError(str(e)) from e
    if req.tracks == "both" and not any(s.text for s in sections):
        raise GenerateInputError(f"{source}: every section is empty; for an accompaniment use tracks=instrumental")
    return sections


# ---- prompt window ---------------------------------------------------------------------------------------------
def check_prompt_window(prompt: AudioPrompt) -> None:
    """Check the files and the window of an ICL prompt from the file headers (no decoding)."""
    from musiccore.audio import AudioError, audio_info

    if len(prompt.paths) not in (1, 2):
        raise GenerateInputError(f"audio prompt: expected 1 (single) or 2 (vocal, instrumental) files, got {len(prompt.paths)}")
    if prompt.start < 0:
        raise GenerateInputError(f"audio prompt: start {prompt.start} s is negative")
    if prompt.frames() < 1:
        raise GenerateInputError(
            f"audio prompt: window {prompt.start}..{prompt.end} s is shorter than one codec frame (1/{FRAME_RATE} s)"
        )
    for path in prompt.paths:
        try:
            info = audio_info(path)
        except AudioError as e:
            raise GenerateInputError(f"audio prompt: {e}") from e
        if prompt.end > info.duration + 1.0 / FRAME_RATE:
            raise GenerateInputError(
                f"audio prompt {path}: window end {prompt.end} s is past the end of the file ({info.duration:.2f} s)"
            )


# ---- batch ------------------------------------------------------------------------------------------------------
@dataclass
class RequestRow:
    """One line of a batch file: the parsed request, or why it is unusable."""

    line: int
    request: SongRequest | None
    error: str | None = None
    name: str = ""


def read_requests(path: str | os.PathLike) -> list[RequestRow]:
    """Parse a jsonl of requests (one JSON object a line; blank lines and ``#`` comments skipped).

    Bad rows are returned with ``error`` set (naming the file and line) so the batch can skip them and go on.
    Each row gets a folder name: its ``id``, else ``song_<line>``.
    """
    rows: list[RequestRow] = []
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise GenerateInputError(f"{p}: cannot read the requests file ({e})") from e
    seen: set[str] = set()
    for i, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{p}:{i}"
        try:
            req = SongRequest.from_json(json.loads(line), where)
            name = req.id or f"song_{i:05d}"
            if not re.fullmatch(r"[\w.-]+", name) or name in seen:
                raise GenerateInputError(f"{where}: id {name!r} is not a unique file-name-safe string")
            seen.add(name)
            rows.append(RequestRow(i, req, None, name))
        except (json.JSONDecodeError, GenerateInputError, TypeError, ValueError) as e:
            rows.append(RequestRow(i, None, f"{where}: {e}", f"song_{i:05d}"))
    return rows


__all__ += ["RequestRow", "TRACKS", "FRAME_RATE", "parse_sections", "read_lyrics"]
