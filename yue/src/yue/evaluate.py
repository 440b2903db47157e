"""Evaluation of generated songs (``yue eval``): Fréchet distance, sections and durations, vocal presence, codes.

Inputs
------
- **Generated songs**: a folder of song folders written by ``yue generate`` (or one song folder). A song folder holds
  ``song.json`` with ``request`` {genre, lyrics, sections: [{label, text}], n_sections, audio_prompt, seed},
  ``settings``, ``timings``, ``sections`` [{label, start_s, end_s, frames}], ``sample_rate`` and ``files`` {vocal,
  instrumental, mix, stage1_ids, stage2_vocal, stage2_instrumental} (names relative to the folder). A song folder
  whose ``song.json`` or listed files are missing or unreadable is **skipped and reported**; the others are evaluated.
- **Reference songs** (only for the Fréchet distance): a folder of audio files (recursive; wav/flac/mp3/ogg). In a
  folder that holds a ``song.json`` or a ``mix.*`` file only that mix is used (generated-song folders, data-kit
  songs), so stems are never counted as songs. Hidden files and folders (``.name.tmp`` of atomic writers and of a
  data-kit build in progress) are ignored on both sides.
- **Embedder**: any local ``transformers.HubertModel`` folder (``config.json`` with ``model_type: hubert`` plus
  weights), e.g. a MERT model written by ``mert export-hf``. Nothing is downloaded and no remote code is run.

Checks per song
---------------
1. *Sections*: the requested sections (``request.sections[:n_sections]``) against ``song.json`` ``sections`` in
   order: present, label equal, non-empty; extra sections; boundaries start at 0 and are contiguous; ``frames`` equals
   ``round((end_s - start_s) * frame_rate)`` (+-1); each duration within the bounds of the song's
   ``settings.stage1.{min,max}_new_tokens`` at 2 ids per 20 ms frame (when song.json has no such settings:
   ``[min_section_s, max_section_s]`` = 1-30 s, upstream's 100-3000 new tokens); the total (end of the last section)
   against the length of every audio file (``duration_tol_s``).
2. *Vocal presence* per section, from the vocal stem: librosa pYIN at 8 kHz, 20 ms hop, f0 in 65-1000 Hz. A frame
   counts as sung when pYIN calls it voiced and its RMS is above ``vocal_min_rms_db`` (-50 dBFS); frames within
   ``vocal_edge_s`` (0.1 s) of a section boundary are left out. **A section has vocals when at least
   ``vocal_voiced_ratio`` (20 %) of its frames are sung.** Vocals are expected in a section with lyric text and not
   in an empty (instrumental) one; an instrumental-only request (``tracks: instrumental``, or no text anywhere)
   expects none in the whole song. Each section reports its ratio, its RMS and whether detection agrees. pYIN finds
   pitched sound, not singing as such: an instrument leaking into the vocal stem counts as vocals.
3. *Codes*: ``stage1_ids`` as ``yue generate`` writes it is the whole stage-1 document (head, prompts, generated ids,
   markers). It is read with :func:`yue.sequences.parse_stage1` and the tokenizer that wrote it
   (:attr:`EvalConfig.tokenizer`); every id in a section's audio block must be a codebook-0 id of the tokenizer's
   codec layout (released: 45334..46357; ``settings.codec_layout`` / ``settings.xcodec`` in song.json override it)
   and each block must hold the section's frames. Bare codec ids, ``[2, T]`` or flat ``v0 i0 v1 i1 ...``, are read
   too. ``stage2_*`` are codes ``[8, T]`` in ``0..codebook_size-1``; their row 0 must equal the stage-1 codes of the
   track. All ``T`` must equal the sum of the section frames. Out-of-range values are listed with their position.
4. *Fréchet distance* between the generated mixes and the reference songs: each song is one embedding, the
   time-average of one hidden layer (or the mean of all layers) over all frames of the song, computed window by
   window (``window_s``) so a long song never sits in the model at once; audio is resampled to the embedder's rate
   (``preprocessor_config.json`` ``sampling_rate``, else ``config.json`` ``sample_rate`` as ``mert export-hf``
   writes it, else 16 kHz). Distance from :func:`musiccore.eval.frechet.frechet_distance` (needs >= 2 songs a side;
   with fewer songs than embedding dimensions the covariances are singular and the value is biased: compare
   numbers only at equal set sizes).

Output: ``eval.json`` and ``eval.md`` in the report folder, both written atomically.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from yue.codec_ids import CodecIdError, CodecIdLayout, RELEASED_XCODEC

log = logging.getLogger(__name__)

__all__ = [
    "EvalConfig",
    "EvalInputError",
    "EmbedderError",
    "SongFolderError",
    "HubertEmbedder",
    "GeneratedSong",
    "find_song_folders",
    "find_reference_files",
    "load_song",
    "check_sections",
    "check_codes",
    "vocal_presence",
    "evaluate_song",
    "evaluate",
    "write_report",
    "render_markdown",
]

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
SONG_FILE_KEYS = ("vocal", "instrumental", "mix", "stage1_ids", "stage2_vocal", "stage2_instrumental")
TRACKS = ("vocal", "instrumental")


class EvalInputError(ValueError):
    """The generated-songs or reference folder cannot be evaluated at all (missing, no songs, ...)."""


class EmbedderError(ValueError):
    """The embedder folder is missing or is not a loadable ``transformers.HubertModel`` folder."""


class SongFolderError(ValueError):
    """One song folder cannot be evaluated (missing/corrupt ``song.json`` or file); it is skipped and reported."""


@dataclass
class EvalConfig:
    """Settings of ``yue eval`` (every field is a plain value, so the report records them)."""

    layer: int | str = -1
    """Hidden state of the embedder to pool: an index into ``hidden_states`` (0 = the conv features after the
    projection, i.e. the encoder input; -1 = the last layer) or ``"mean"`` (average over all of them)."""
    window_s: float = 10.0
    """Audio per forward pass of the embedder (s). Frame features of all windows are averaged together."""
    min_last_window_s: float = 1.0
    """A last window shorter than this is dropped (unless it is the only one), as MARBLE does."""
    batch_size: int = 4
    """Full windows per forward pass."""
    device: str = "cpu"
    """torch device of the embedder."""
    normalize: bool | None = None
    """Zero-mean/unit-variance per window before the embedder; None = ``do_normalize`` of the folder's
    ``preprocessor_config.json`` (False when there is none, as for MERT-v1 and ``mert export-hf`` folders)."""
    frame_rate: float = 50.0
    """Codec frames per second (X-Codec: 50)."""
    min_section_s: float = 1.0
    """Shortest acceptable section when song.json records no ``settings.stage1.min_new_tokens`` (upstream's 100
    stage-1 tokens = 50 frames)."""
    max_section_s: float = 30.0
    """Longest acceptable section when song.json records no ``settings.stage1.max_new_tokens`` (upstream's 3000
    tokens = 1500 frames)."""
    duration_tol_s: float = 0.1
    """Allowed difference between the section total and the length of each audio file (s)."""
    vocal_voiced_ratio: float = 0.2
    """A section has vocals when at least this fraction of its frames are voiced and loud enough."""
    vocal_min_rms_db: float = -50.0
    """Frames quieter than this (dBFS RMS) never count as sung."""
    vocal_edge_s: float = 0.1
    """Frames this close to a section boundary are left out (their analysis window straddles two sections);
    sections shorter than 4x this keep all their frames."""
    pitch_sample_rate: int = 8000
    """Rate of the vocal stem for pYIN (f0 up to 1 kHz needs no more)."""
    pitch_hop_s: float = 0.02
    """pYIN hop (s)."""
    pitch_fmin: float = 65.0
    """Lowest f0 searched (Hz, C2)."""
    pitch_fmax: float = 1000.0
    """Highest f0 searched (Hz, about B5)."""
    pitch_resolution: float = 0.25
    """pYIN bin width in semitones (voicing does not need fine pitch; 0.25 is ~6x faster than 0.1)."""
    stage2_codebooks: int = 8
    """Codebooks per stage-2 track."""
    tokenizer: str | None = None
    """``tokenizer.model`` that reads the stage-1 documents (``stage1_ids.npy`` as ``yue generate`` writes it; a
    ``layout.json`` beside it is used). None = ``settings.models.tokenizer`` of song.json, else
    ``settings.models.stage1``/tokenizer.model, else the released one."""
    codec_layout: dict | None = None
    """Codec-id layout of the stage-1 ids {global_offset, codebook_size, num_codebooks}; None = the tokenizer's
    (else the released X-Codec's). ``settings.codec_layout`` (or ``settings.xcodec``) in song.json wins."""
    max_positions: int = 20
    """Out-of-range values listed per file in the report (all of them are counted)."""

    def __post_init__(self):
        if isinstance(self.layer, str) and self.layer != "mean":
            try:
                self.layer = int(self.layer)
            except ValueError:
                raise ValueError(f"layer must be an integer or 'mean', got {self.layer!r}") from None
        for name in ("window_s", "frame_rate", "max_section_s", "pitch_hop_s", "pitch_fmin", "pitch_fmax",
                     "pitch_resolution"):  # fmt: skip
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if not 0 < self.vocal_voiced_ratio <= 1:
            raise ValueError(f"vocal_voiced_ratio must be in (0, 1], got {self.vocal_voiced_ratio}")
        if self.batch_size < 1 or self.stage2_codebooks < 1 or self.pitch_sample_rate < 2 * self.pitch_fmax:
            raise ValueError("batch_size and stage2_codebooks must be >= 1 and pitch_sample_rate >= 2 * pitch_fmax")

    def layout(self) -> CodecIdLayout:
        return CodecIdLayout(**self.codec_layout) if self.codec_layout else RELEASED_XCODEC


# ============================================================================================ embedder


def _read_json(path: Path, error: type[ValueError]) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: cannot read JSON ({e})") from e
    if not isinstance(d, dict):
        raise error(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


class HubertEmbedder:
    """Song embeddings from a local ``transformers.HubertModel`` folder.

    ``embed_file(path)`` streams the file in ``window_s`` windows at :attr:`sample_rate` (mono), runs the model on
    batches of windows ``[B, W]``, takes the chosen hidden state ``[B, F, D]`` (or the mean of all ``L+1`` of them)
    and returns the average over every frame of the song, ``[D]`` float64.

    Raises:
        EmbedderError: the folder does not exist, has no ``config.json``, is not a HuBERT model (e.g. a released
            MERT folder with ``model_type: mert_model``, which needs remote code: export it with ``mert export-hf``),
            its weights are missing or do not fit, or the layer does not exist.
    """

    def __init__(self, folder: str | Path, config: EvalConfig | None = None):
        import torch
        from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor
        from transformers.utils import logging as hf_logging

        if not sys.stderr.isatty():
            hf_logging.disable_progress_bar()  # no "Loading weights" bars in Slurm .out files
        self.config = config or EvalConfig()
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise EmbedderError(f"embedder folder {self.folder} does not exist (or is not a folder)")
        cfg_path = self.folder / "config.json"
        if not cfg_path.is_file():
            raise EmbedderError(f"{self.folder}: no config.json, not a transformers model folder")
        raw = _read_json(cfg_path, EmbedderError)
        if raw.get("model_type") != "hubert":
            raise EmbedderError(
                f"{cfg_path}: model_type {raw.get('model_type')!r} is not 'hubert' (a plain transformers.HubertModel "
                f"folder is needed; export a MERT model with `mert export-hf`)"
            )
        try:
            hcfg = HubertConfig.from_pretrained(self.folder, local_files_only=True)
            model, info = HubertModel.from_pretrained(
                self.folder, config=hcfg, local_files_only=True, output_loading_info=True
            )
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
            why = " ".join(str(e).split())  # one line: transformers' messages span several
            raise EmbedderError(f"{self.folder}: cannot load a HubertModel ({type(e).__name__}: {why})") from e
        missing = list(info.get("missing_keys", [])) + list(info.get("mismatched_keys", []))
        if missing:
            raise EmbedderError(
                f"{self.folder}: the weights do not fit HubertModel ({len(missing)} missing/mismatched, e.g. "
                f"{', '.join(map(str, missing[:3]))})"
            )
        self.model = model.eval().to(self.config.device)
        self.num_layers = int(hcfg.num_hidden_layers)
        self.hidden_size = int(hcfg.hidden_size)
        layer = self.config.layer
        if layer != "mean" and not -(self.num_layers + 1) <= int(layer) <= self.num_layers:
            raise EmbedderError(
                f"layer {layer} does not exist: {self.folder} has hidden states 0..{self.num_layers} "
                f"(0 = encoder input, {self.num_layers} = last layer)"
            )
        # The expected input rate and normalisation: feature-extractor file first, then config.json.
        pre = self.folder / "preprocessor_config.json"
        rate_cfg = raw.get("sample_rate") or raw.get("sampling_rate")
        if pre.is_file():
            try:
                self.feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(self.folder, local_files_only=True)
            except (OSError, ValueError) as e:
                raise EmbedderError(f"{pre}: cannot read the feature extractor ({e})") from e
            if rate_cfg and int(rate_cfg) != self.feature_extractor.sampling_rate:
                log.warning("%s: preprocessor sampling_rate %d differs from config.json %s; using the former",
                            self.folder, self.feature_extractor.sampling_rate, rate_cfg)  # fmt: skip
            if self.config.normalize is not None:
                self.feature_extractor.do_normalize = bool(self.config.normalize)
        else:
            if not rate_cfg:
                log.warning("%s: no preprocessor_config.json and no sample_rate in config.json: assuming 16000 Hz",
                            self.folder)  # fmt: skip
            self.feature_extractor = Wav2Vec2FeatureExtractor(
                sampling_rate=int(rate_cfg or 16000), do_normalize=bool(self.config.normalize)
            )
        self.sample_rate = int(self.feature_extractor.sampling_rate)
        self._torch = torch

    def describe(self) -> dict[str, Any]:
        """What the report records about the embedder."""
        return {
            "folder": str(self.folder),
            "sample_rate": self.sample_rate,
            "layer": self.config.layer,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "normalize": bool(self.feature_extractor.do_normalize),
            "window_s": self.config.window_s,
        }

    def _pooled_sum(self, windows: list[np.ndarray]) -> tuple[np.ndarray, int]:
        """Equal-length windows ``[W]`` each -> (sum over frames of the chosen features ``[D]``, frame count)."""
        torch = self._torch
        inputs = self.feature_extractor(windows, sampling_rate=self.sample_rate, return_tensors="pt")
        x = inputs["input_values"].to(self.config.device, torch.float32)  # [B, W]
        with torch.inference_mode():
            hs = self.model(x, output_hidden_states=True).hidden_states  # (L+1) x [B, F, D]
        h = torch.stack(hs).mean(0) if self.config.layer == "mean" else hs[int(self.config.layer)]
        return h.double().sum(dim=(0, 1)).cpu().numpy(), int(h.shape[0] * h.shape[1])

    def embed_wave(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """A waveform ``[T]`` or ``[C, T]`` at ``sample_rate`` -> song embedding ``[D]`` (see the class doc)."""
        from musiccore.audio import resample, to_mono

        y = resample(to_mono(wav), sample_rate, self.sample_rate)[0]
        win = max(1, int(round(self.config.window_s * self.sample_rate)))
        min_last = int(round(self.config.min_last_window_s * self.sample_rate))
        # Same windows as embed_file: a short last window is dropped unless it is the only one.
        starts = [s for s in range(0, max(1, y.size), win) if s == 0 or y.size - s >= min(win, min_last)]
        return self._embed_windows(((s, y[s : s + win]) for s in starts), where="waveform")

    def embed_file(self, path: str | Path) -> np.ndarray:
        """An audio file -> song embedding ``[D]`` (streamed in windows; raises ``AudioError`` on bad audio)."""
        from musiccore.audio import iter_windows

        windows = iter_windows(path, self.sample_rate, self.config.window_s, mono=True,
                               min_last_s=self.config.min_last_window_s)  # fmt: skip
        return self._embed_windows(windows, where=str(path))

    def _embed_windows(self, windows: Iterable[tuple[int, np.ndarray]], where: str = "audio") -> np.ndarray:
        from musiccore.audio import AudioError

        win = int(round(self.config.window_s * self.sample_rate))
        min_len = self._min_samples()
        total = np.zeros(self.hidden_size, np.float64)
        frames = 0
        batch: list[np.ndarray] = []

        def flush(group: list[np.ndarray]) -> None:
            nonlocal total, frames
            s, n = self._pooled_sum(group)
            total += s
            frames += n

        for _, w in windows:
            w = np.asarray(w, np.float32).reshape(-1)
            if w.size == win:
                batch.append(w)  # full windows share one forward pass
                if len(batch) == self.config.batch_size:
                    flush(batch)
                    batch = []
            elif w.size >= min_len:
                flush([w])  # the shorter last window runs alone (no padding frames in the average)
        if batch:
            flush(batch)
        if frames == 0:
            raise AudioError(f"{where}: too short for the embedder (needs at least {min_len} samples at "
                             f"{self.sample_rate} Hz)")  # fmt: skip
        return total / frames

    def _min_samples(self) -> int:
        """Receptive field of the conv feature encoder: the shortest input that yields one frame."""
        cfg = self.model.config
        n = 1
        for k, s in reversed(list(zip(cfg.conv_kernel, cfg.conv_stride))):
            n = (n - 1) * s + k
        return n


# ============================================================================================ discovery


def _visible_dirs(root: Path) -> list[Path]:
    """Sub-folders of ``root`` (recursive, sorted), leaving out hidden ones and everything inside them: atomic
    writers and builders (``musiccore.runs.atomic_path``, the data kit) work in ``.name.tmp`` folders."""
    dirs = (q for q in root.rglob("*") if q.is_dir())
    return sorted(q for q in dirs if not any(part.startswith(".") for part in q.relative_to(root).parts))


def find_song_folders(root: str | Path, exclude: Sequence[Path] = ()) -> tuple[list[Path], list[dict]]:
    """Song folders under ``root`` (``root`` itself when it holds ``song.json``).

    Returns ``(folders, skipped)``: the folders holding a ``song.json``, and ``{"path", "reason"}`` for folders that
    look like an unfinished or broken song (they hold audio/npy files but no ``song.json``).

    Raises:
        EvalInputError: ``root`` is not a folder, or holds no song folder and nothing that looks like one.
    """
    root = Path(root)
    if not root.is_dir():
        raise EvalInputError(f"generated-songs folder {root} does not exist (or is not a folder)")
    if (root / "song.json").exists():
        return [root], []
    excl = {Path(p).resolve() for p in exclude}

    def excluded(d: Path) -> bool:
        r = d.resolve()
        return bool(excl & {r, *r.parents})

    dirs = _visible_dirs(root)
    folders = [d for d in dirs if (d / "song.json").is_file() and not excluded(d)]
    skipped = []
    for d in dirs:
        if d in folders or excluded(d) or any(f in d.parents for f in folders):
            continue  # a song folder, the report folder, or something inside a song folder
        names = {q.name for q in d.iterdir() if q.is_file()}
        if any(n.endswith((".npy", *AUDIO_SUFFIXES)) or n.startswith(".song.json") for n in names):
            skipped.append({"path": str(d), "reason": "no song.json (unfinished or not a song folder)"})
    if not folders and not skipped:
        raise EvalInputError(f"{root}: no generated song folders (no song.json found at any depth)")
    return folders, skipped


def find_reference_files(root: str | Path) -> list[Path]:
    """Audio files of a reference folder (see the module doc: one mix per song folder, otherwise every file).

    Raises:
        EvalInputError: the folder does not exist or holds no audio file.
    """
    root = Path(root)
    if root.is_file() and root.suffix.lower() in AUDIO_SUFFIXES:
        return [root]
    if not root.is_dir():
        raise EvalInputError(f"reference folder {root} does not exist (or is not a folder)")
    out: list[Path] = []
    for d in [root, *_visible_dirs(root)]:
        files = sorted(q for q in d.iterdir()
                       if q.is_file() and q.suffix.lower() in AUDIO_SUFFIXES and not q.name.startswith("."))
        mix = None
        if (d / "song.json").is_file():
            try:
                mix = d / str(_read_json(d / "song.json", EvalInputError)["files"]["mix"])
            except (EvalInputError, KeyError, TypeError):
                mix = None
        mixes = [q for q in files if q.stem == "mix"]
        if mix is not None and mix.is_file():
            out.append(mix)  # a generated-song folder: its mix only
        elif mixes:
            out.append(mixes[0])  # a data-kit song folder: the mix, not the stems
        else:
            out += files
    if not out:
        raise EvalInputError(f"{root}: no reference audio files ({'/'.join(AUDIO_SUFFIXES)}) found")
    return out


# ============================================================================================ one song


@dataclass
class GeneratedSong:
    """A parsed and loaded song folder. Arrays as stored: ``stage1`` ids (the flat stage-1 document ``[N]``, or bare
    codec ids ``[2, T]`` / ``[2T]``; None when not written) and ``stage2[track]`` codes ``[8, T]`` (or None)."""

    folder: Path
    meta: dict
    requested: list[dict]  # [{label, text}] actually requested (first n_sections)
    sections: list[dict]  # [{label, start_s, end_s, frames}] as generated
    files: dict[str, Path | None]
    stage1: np.ndarray | None
    stage2: dict[str, np.ndarray | None]
    audio_info: dict[str, Any]  # key -> musiccore.audio.AudioInfo

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def instrumental_only(self) -> bool:
        """``request.tracks == "instrumental"``, or no section has lyric text (upstream's way to ask for it)."""
        req = self.meta.get("request") or {}
        if isinstance(req, dict) and req.get("tracks") == "instrumental":
            return True
        return bool(self.requested) and not any(str(s.get("text", "")).strip() for s in self.requested)


def _num(v, what: str, where: Path) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SongFolderError(f"{where}: {what} must be a finite number, got {v!r}")
    return float(v)


def load_song(folder: str | Path) -> GeneratedSong:
    """Read and validate ``song.json`` and load the stage-1/stage-2 arrays; check the audio files decode.

    Raises:
        SongFolderError: naming the file and the reason (missing, not JSON, missing key, corrupt npy/audio).
    """
    from musiccore.audio import AudioError, audio_info

    folder = Path(folder)
    sj = folder / "song.json"
    if not sj.is_file():
        raise SongFolderError(f"{folder}: no song.json")
    meta = _read_json(sj, SongFolderError)
    for key in ("request", "sections", "files"):
        if key not in meta:
            raise SongFolderError(f"{sj}: missing key {key!r}")
    req = meta["request"]
    if not isinstance(req, dict) or not isinstance(req.get("sections"), list):
        raise SongFolderError(f"{sj}: request.sections must be a list of {{label, text}}")
    requested = []
    for i, s in enumerate(req["sections"]):
        if not isinstance(s, dict) or not isinstance(s.get("label"), str):
            raise SongFolderError(f"{sj}: request.sections[{i}] has no label")
        requested.append({"label": s["label"], "text": str(s.get("text") or "")})
    n = req.get("n_sections")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise SongFolderError(f"{sj}: request.n_sections must be a positive integer or null, got {n!r}")
        requested = requested[:n]
    sections = []
    if not isinstance(meta["sections"], list):
        raise SongFolderError(f"{sj}: sections must be a list")
    for i, s in enumerate(meta["sections"]):
        if not isinstance(s, dict):
            raise SongFolderError(f"{sj}: sections[{i}] is not an object")
        sec = {"label": str(s.get("label", ""))}
        for k in ("start_s", "end_s"):
            sec[k] = _num(s.get(k), f"sections[{i}].{k}", sj)
        fr = s.get("frames")
        sec["frames"] = int(_num(fr, f"sections[{i}].frames", sj))
        sections.append(sec)
    if not isinstance(meta["files"], dict):
        raise SongFolderError(f"{sj}: files must be an object")
    files: dict[str, Path | None] = {}
    for key in SONG_FILE_KEYS:
        name = meta["files"].get(key)
        if name is None:
            files[key] = None  # not produced by this request (the checks that need it are reported as n/a)
            continue
        p = folder / str(name)
        if not p.is_file():
            raise SongFolderError(f"{folder}: files.{key} = {name!r} is missing")
        files[key] = p

    def load_npy(key: str) -> np.ndarray | None:
        p = files[key]
        if p is None:
            return None
        try:
            a = np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise SongFolderError(f"{p}: corrupt .npy ({e})") from e
        if not np.issubdtype(a.dtype, np.integer):
            raise SongFolderError(f"{p}: expected integer ids/codes, got dtype {a.dtype}")
        return a.astype(np.int64)

    raw1 = load_npy("stage1_ids")
    stage2 = {t: load_npy(f"stage2_{t}") for t in TRACKS}
    info = {}
    for key in ("vocal", "instrumental", "mix"):
        if files[key] is not None:
            try:
                info[key] = audio_info(files[key])
            except AudioError as e:
                raise SongFolderError(str(e)) from e
            if info[key].frames == 0:
                raise SongFolderError(f"{files[key]}: audio file has no samples")
    return GeneratedSong(folder, meta, requested, sections, files, raw1, stage2, info)


def _section_bounds(song: GeneratedSong, cfg: EvalConfig) -> tuple[float, float]:
    """Shortest/longest acceptable section (s): from ``settings.stage1.{min,max}_new_tokens`` of song.json (2 ids
    per frame) when the song records them, else ``cfg.min_section_s`` / ``cfg.max_section_s``."""
    lo, hi = cfg.min_section_s, cfg.max_section_s
    st1 = (song.meta.get("settings") or {}).get("stage1") if isinstance(song.meta.get("settings"), dict) else None
    if isinstance(st1, dict):
        for key in ("min_new_tokens", "max_new_tokens"):
            v = st1.get(key)
            if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                if key == "min_new_tokens":
                    lo = v / 2 / cfg.frame_rate
                else:
                    hi = v / 2 / cfg.frame_rate
    return lo, hi


def check_sections(song: GeneratedSong, cfg: EvalConfig) -> dict[str, Any]:
    """Requested vs generated sections, boundaries, frame counts and durations (see the module doc, check 1).

    Returns ``{"requested", "generated", "present", "missing": [...], "extra": [...], "per_section": [...],
    "total_s", "audio_s": {key: s}, "problems": [str]}``.
    """
    problems: list[str] = []
    per = []
    prev_end = 0.0
    lo_s, hi_s = _section_bounds(song, cfg)
    for i, s in enumerate(song.sections):
        dur = s["end_s"] - s["start_s"]
        exp_frames = int(round(dur * cfg.frame_rate))
        row = {"index": i, "label": s["label"], "start_s": s["start_s"], "end_s": s["end_s"], "duration_s": dur,
               "frames": s["frames"], "requested_label": None, "status": "extra"}  # fmt: skip
        if abs(s["start_s"] - prev_end) > 1.0 / cfg.frame_rate + 1e-6:
            problems.append(f"section {i} [{s['label']}] starts at {s['start_s']:.3f} s, previous ends at "
                            f"{prev_end:.3f} s")  # fmt: skip
        if dur <= 0:
            problems.append(f"section {i} [{s['label']}] has a non-positive duration ({dur:.3f} s)")
        if abs(s["frames"] - exp_frames) > 1:
            problems.append(f"section {i} [{s['label']}]: frames {s['frames']} != {exp_frames} for {dur:.3f} s "
                            f"at {cfg.frame_rate:g} frames/s")  # fmt: skip
        if 0 < dur < lo_s - 1e-6 or dur > hi_s + 1e-6:
            problems.append(f"section {i} [{s['label']}]: duration {dur:.2f} s outside {lo_s:g}..{hi_s:g} s")
        prev_end = s["end_s"]
        per.append(row)
    missing = []
    for i, r in enumerate(song.requested):
        if i >= len(per):
            missing.append({"index": i, "label": r["label"]})
            problems.append(f"requested section {i} [{r['label']}] is missing")
            continue
        per[i]["requested_label"] = r["label"]
        if per[i]["frames"] <= 0:
            per[i]["status"] = "empty"
            missing.append({"index": i, "label": r["label"]})
            problems.append(f"requested section {i} [{r['label']}] is empty (0 frames)")
        elif per[i]["label"] != r["label"]:
            per[i]["status"] = "label differs"
            problems.append(f"section {i}: generated [{per[i]['label']}] where [{r['label']}] was requested")
        else:
            per[i]["status"] = "ok"
    extra = [{"index": r["index"], "label": r["label"]} for r in per if r["status"] == "extra"]
    for e in extra:
        problems.append(f"section {e['index']} [{e['label']}] was not requested")
    total = song.sections[-1]["end_s"] if song.sections else 0.0
    audio_s = {k: v.duration for k, v in song.audio_info.items()}
    for k, d in audio_s.items():
        if abs(d - total) > cfg.duration_tol_s:
            problems.append(f"{song.files[k].name}: {d:.3f} s of audio, sections end at {total:.3f} s")
    sr = song.meta.get("sample_rate")
    for k, v in song.audio_info.items():
        if isinstance(sr, int) and v.sample_rate != sr:
            problems.append(f"{song.files[k].name}: {v.sample_rate} Hz, song.json says sample_rate {sr}")
    return {
        "requested": len(song.requested),
        "generated": len(song.sections),
        "present": sum(r["status"] in ("ok", "label differs") for r in per),
        "missing": missing,
        "extra": extra,
        "per_section": per,
        "total_s": total,
        "section_bounds_s": [lo_s, hi_s],
        "audio_s": audio_s,
        "problems": problems,
    }


@functools.lru_cache(maxsize=8)
def _tokenizer(path: str):
    from yue.tokenizer import YuETokenizer

    return YuETokenizer(path)  # layout.json beside the model (tiny tokenizers) is picked up


def _song_tokenizer(song: GeneratedSong, cfg: EvalConfig):
    """The tokenizer that wrote the song's stage-1 document (see :attr:`EvalConfig.tokenizer`), or None."""
    from yue.tokenizer import TokenizerError, find_released_tokenizer

    models = (song.meta.get("settings") or {}).get("models") if isinstance(song.meta.get("settings"), dict) else None
    models = models if isinstance(models, dict) else {}
    candidates = [cfg.tokenizer, models.get("tokenizer")]
    if models.get("stage1"):
        candidates.append(str(Path(str(models["stage1"])) / "tokenizer.model"))
    candidates.append(find_released_tokenizer())
    for c in candidates:
        if c and Path(str(c)).is_file():
            try:
                return _tokenizer(str(Path(str(c)).resolve()))
            except (TokenizerError, ValueError, OSError) as e:
                raise SongFolderError(f"{song.folder}: tokenizer {c} cannot be read ({e})") from e
    return None


def _song_layout(song: GeneratedSong, cfg: EvalConfig, tok=None) -> CodecIdLayout:
    """``settings.codec_layout`` / ``settings.xcodec`` of song.json, else the tokenizer's, else the config's."""
    settings = song.meta.get("settings") or {}
    d = settings.get("codec_layout") or settings.get("xcodec") if isinstance(settings, dict) else None
    if isinstance(d, dict):
        try:
            return CodecIdLayout(**{k: int(d[k]) for k in ("global_offset", "codebook_size", "num_codebooks")})
        except (KeyError, TypeError, ValueError, CodecIdError) as e:
            raise SongFolderError(f"{song.folder / 'song.json'}: bad settings codec layout {d!r} ({e})") from e
    if tok is not None and cfg.codec_layout is None:
        return tok.layout.xcodec
    return cfg.layout()


def _positions(bad: np.ndarray, values: np.ndarray, names: tuple[str, str], limit: int) -> list[dict]:
    idx = np.argwhere(bad)[:limit]
    return [{names[0]: int(a), names[1]: int(b), "value": int(values[a, b])} for a, b in idx]


def _document_blocks(tok, ids: list[int]) -> list[list[int]]:
    """Bodies of the section audio blocks (``<SOA> <xcodec> body <EOA>``) of a stage-1 document, ICL block left out."""
    from yue.sequences import MARKERS

    soa, eoa, xc = tok.id("<SOA>"), tok.id("<EOA>"), tok.id("<xcodec>")
    sor = tok.tokenize(MARKERS["start_of_reference"])
    blocks, p = [], 0
    while True:
        try:
            p = ids.index(soa, p)
        except ValueError:
            return blocks
        if p + 1 < len(ids) and ids[p + 1] == xc:
            try:
                end = ids.index(eoa, p + 2)
            except ValueError:
                end = len(ids)
            if ids[max(0, p - len(sor)) : p] != sor:  # the reference block is a prompt, not generated
                blocks.append(ids[p + 2 : end])
            p = end
        p += 1


def _stage1_document(song: GeneratedSong, tok, lo: int, hi: int, cfg: EvalConfig, problems: list[str]):
    """Check a whole stage-1 document: ``(entry, codes [2, T] with -1 at bad ids)``; problems are appended."""
    from yue.sequences import parse_stage1

    ids = [int(x) for x in song.stage1]
    ap = song.meta["request"].get("audio_prompt")
    mode = ap.get("mode") if isinstance(ap, dict) and ap.get("mode") in ("dual", "single") else "dual"
    parsed = parse_stage1(tok, ids, reference_mode=mode)
    problems += [f"stage1_ids: {e}" for e in parsed.errors]
    blocks = _document_blocks(tok, ids)
    if len(blocks) != len(song.sections):
        problems.append(f"stage1_ids: {len(blocks)} section audio blocks, song.json has {len(song.sections)} sections")
    ent: dict[str, Any] = {"shape": [len(ids)], "format": "document", "sections": len(blocks), "frames": 0,
                           "out_of_range": 0, "positions": []}  # fmt: skip
    tracks: list[list[np.ndarray]] = [[], []]
    t0 = 0
    for k, body in enumerate(blocks):
        arr = np.asarray(body[: len(body) - len(body) % 2], np.int64).reshape(-1, 2).T  # [2, T_k]: v0 i0 v1 i1
        bad = (arr < lo) | (arr >= hi)
        ent["out_of_range"] += int(bad.sum())
        for tr, fr in np.argwhere(bad):  # positions in song frames, plus the section they are in
            if len(ent["positions"]) < cfg.max_positions:
                ent["positions"].append({"section": k, "track": TRACKS[tr], "frame": t0 + int(fr),
                                         "value": int(arr[tr, fr])})  # fmt: skip
        if k < len(song.sections) and arr.shape[1] != song.sections[k]["frames"]:
            problems.append(f"stage1_ids: section {k} holds {arr.shape[1]} frames, song.json says "
                            f"{song.sections[k]['frames']}")  # fmt: skip
        codes = np.where(bad, -1, arr - lo)
        tracks[0].append(codes[0])
        tracks[1].append(codes[1])
        t0 += arr.shape[1]
    ent["frames"] = t0
    codes = np.stack([np.concatenate(t) if t else np.zeros(0, np.int64) for t in tracks])
    return ent, codes


def _has_segments(tok, raw: np.ndarray) -> bool:
    """Whether flat ids hold a ``[start_of_segment]`` marker (a stage-1 document, not bare codec ids)."""
    from yue.sequences import MARKERS

    sos = tok.tokenize(MARKERS["start_of_segment"])
    flat = raw.reshape(-1).tolist()
    return any(flat[p : p + len(sos)] == sos for p in range(len(flat)) if flat[p] == sos[0])


def _stage1_codes(raw: np.ndarray, lo: int, hi: int, cfg: EvalConfig, problems: list[str]):
    """Bare codec ids, ``[2, T]`` or flat ``v0 i0 v1 i1 ...``: ``(entry, codes [2, T] with -1 at bad ids)``."""
    ent: dict[str, Any] = {"shape": list(raw.shape), "format": "codes", "frames": None, "out_of_range": 0,
                           "positions": []}  # fmt: skip
    if raw.ndim == 1 and raw.size % 2 == 0:
        ids = raw.reshape(-1, 2).T  # frame-major v0 i0 v1 i1 ... -> [2, T]
    elif raw.ndim == 2 and raw.shape[0] == 2:
        ids = raw
    else:
        problems.append(f"stage1_ids: shape {list(raw.shape)} is neither [2, T] nor an even-length flat list")
        return ent, None
    bad = (ids < lo) | (ids >= hi)
    ent["frames"] = int(ids.shape[1])
    ent["out_of_range"] = int(bad.sum())
    ent["positions"] = [{"track": TRACKS[p["track"]], "frame": p["frame"], "value": p["value"]}
                        for p in _positions(bad, ids, ("track", "frame"), cfg.max_positions)]  # fmt: skip
    return ent, np.where(bad, -1, ids - lo)


def check_codes(song: GeneratedSong, cfg: EvalConfig) -> dict[str, Any]:
    """Stage-1 ids and stage-2 codes: shapes, ranges with positions, frame counts (module doc, check 3).

    Returns ``{"layout", "section_frames", "stage1": {...}, "stage2_vocal": {...}, "stage2_instrumental": {...},
    "problems": [str]}``; each file entry has ``shape``, ``frames``, ``out_of_range`` (count) and ``positions``.
    """
    raw = song.stage1
    tok = _song_tokenizer(song, cfg) if raw is not None and raw.ndim == 1 else None
    layout = _song_layout(song, cfg, tok)
    lo, hi = layout.id_range(0, 1)
    problems: list[str] = []
    n_frames = sum(s["frames"] for s in song.sections)
    out: dict[str, Any] = {"layout": asdict(layout), "section_frames": n_frames}
    stage1_codes: np.ndarray | None = None
    if raw is None:
        out["stage1"] = None
    elif tok is not None and _has_segments(tok, raw):
        out["stage1"], stage1_codes = _stage1_document(song, tok, lo, hi, cfg, problems)
    elif raw.ndim == 1 and raw.size and float(np.mean(~layout.is_codec_id(raw))) > 0.5:
        why = "no tokenizer was found" if tok is None else f"tokenizer {tok.path} finds no [start_of_segment] in it"
        problems.append(f"stage1_ids: looks like a stage-1 document, but {why} (pass --tokenizer)")
        out["stage1"] = {"shape": list(raw.shape), "format": "document", "frames": None, "out_of_range": None,
                         "positions": []}  # fmt: skip
    else:
        out["stage1"], stage1_codes = _stage1_codes(raw, lo, hi, cfg, problems)
    ent1 = out["stage1"]
    if ent1 is not None and ent1["out_of_range"]:
        first = ent1["positions"][0]
        problems.append(f"stage1_ids: {ent1['out_of_range']} ids outside codebook 0 ({lo}..{hi - 1}); first "
                        f"{first['value']} at track {first['track']}, frame {first['frame']}")  # fmt: skip
    if stage1_codes is not None and stage1_codes.shape[1] != n_frames:
        problems.append(f"stage1_ids: {stage1_codes.shape[1]} frames, the sections hold {n_frames}")
    for ti, track in enumerate(TRACKS):
        key = f"stage2_{track}"
        codes = song.stage2[track]
        if codes is None:
            out[key] = None
            continue
        ent = {"shape": list(codes.shape), "frames": None, "out_of_range": 0, "positions": [], "row0_mismatch": None}
        out[key] = ent
        if codes.ndim != 2 or codes.shape[0] != cfg.stage2_codebooks:
            problems.append(f"{key}: shape {list(codes.shape)}, expected [{cfg.stage2_codebooks}, T]")
            continue
        bad = (codes < 0) | (codes >= layout.codebook_size)
        ent["frames"] = int(codes.shape[1])
        ent["out_of_range"] = int(bad.sum())
        ent["positions"] = _positions(bad, codes, ("codebook", "frame"), cfg.max_positions)
        if bad.any():
            first = ent["positions"][0]
            problems.append(f"{key}: {int(bad.sum())} codes outside 0..{layout.codebook_size - 1}; first "
                            f"{first['value']} at codebook {first['codebook']}, frame {first['frame']}")  # fmt: skip
        if codes.shape[1] != n_frames:
            problems.append(f"{key}: {codes.shape[1]} frames, the sections hold {n_frames}")
        if stage1_codes is not None and stage1_codes.shape[1] == codes.shape[1]:
            # Stage 2 copies codebook 0 from stage 1: any difference means the tracks were mixed up or misaligned.
            diff = np.flatnonzero(codes[0] != stage1_codes[ti])
            ent["row0_mismatch"] = int(diff.size)
            if diff.size:
                problems.append(f"{key}: codebook 0 differs from the stage-1 {track} codes at {diff.size} frames "
                                f"(first at frame {int(diff[0])})")  # fmt: skip
    out["problems"] = problems
    return out


def vocal_presence(
    wav: np.ndarray | None,
    sample_rate: int,
    song_sections: Sequence[dict],
    requested: Sequence[dict],
    cfg: EvalConfig,
    instrumental_only: bool | None = None,
) -> dict[str, Any]:
    """Vocal presence per section from the vocal stem (module doc, check 2).

    Args:
        wav: vocal stem ``[T]`` or ``[C, T]``; None when the song has no vocal stem (then nothing is detected).
        sample_rate: Hz of ``wav``.
        song_sections: generated sections ``[{label, start_s, end_s}]``.
        requested: requested sections ``[{label, text}]`` (same order; extra generated sections expect no vocals).
        instrumental_only: the request asked for no vocals at all (default: no section has text).

    Returns:
        ``{"instrumental_only", "per_section": [{index, label, expected, detected, voiced_ratio, rms_db, agrees}],
        "agreement": fraction of sections that agree, "problems": [str]}``.
    """
    import librosa

    from musiccore.audio import resample, to_mono

    if instrumental_only is None:
        instrumental_only = bool(requested) and not any(str(r.get("text", "")).strip() for r in requested)
    sr = cfg.pitch_sample_rate
    hop = max(1, int(round(cfg.pitch_hop_s * sr)))
    times = sung = rms_db = None
    if wav is not None:
        y = resample(to_mono(wav), sample_rate, sr)[0].astype(np.float32)
        # The frame holds two periods of fmin (pYIN's lag range), rounded up to a power of two.
        frame = 1 << int(math.ceil(math.log2(max(4 * hop, 2.2 * sr / cfg.pitch_fmin + 2))))
        if y.size < frame:
            y = np.pad(y, (0, frame - y.size))
        if np.any(y):
            _, voiced, _ = librosa.pyin(y, fmin=cfg.pitch_fmin, fmax=cfg.pitch_fmax, sr=sr, frame_length=frame,
                                        hop_length=hop, center=True, resolution=cfg.pitch_resolution)  # fmt: skip
        else:  # digital silence: nothing is sung (and pYIN's probabilities would be undefined)
            voiced = np.zeros(1 + y.size // hop, bool)
        rms = librosa.feature.rms(y=y, frame_length=frame, hop_length=hop, center=True)[0]
        n = min(len(voiced), len(rms))
        rms_db = 20 * np.log10(np.maximum(rms[:n], 1e-10))
        sung = voiced[:n] & (rms_db > cfg.vocal_min_rms_db)
        times = np.arange(n) * hop / sr
    per = []
    problems = []
    for i, s in enumerate(song_sections):
        req = requested[i] if i < len(requested) else None
        expected = bool(req is not None and str(req.get("text", "")).strip()) and not instrumental_only
        row: dict[str, Any] = {"index": i, "label": s["label"], "expected": expected, "detected": False,
                               "voiced_ratio": 0.0, "rms_db": None, "agrees": None}  # fmt: skip
        if times is not None:
            edge = cfg.vocal_edge_s if s["end_s"] - s["start_s"] > 4 * cfg.vocal_edge_s else 0.0
            inside = (times >= s["start_s"] + edge) & (times < s["end_s"] - edge)
            if inside.any():
                row["voiced_ratio"] = float(sung[inside].mean())
                row["rms_db"] = float(10 * np.log10(np.mean(10 ** (rms_db[inside] / 10))))  # power mean, in dB
        row["detected"] = row["voiced_ratio"] >= cfg.vocal_voiced_ratio
        row["agrees"] = row["detected"] == expected
        if not row["agrees"]:
            what = "no vocals detected" if expected else "vocals detected"
            why = "lyrics requested" if expected else ("instrumental-only request" if instrumental_only else
                                                       "no lyrics in this section")  # fmt: skip
            problems.append(f"section {i} [{s['label']}]: {what} (voiced {row['voiced_ratio']:.0%}) but {why}")
        per.append(row)
    agree = [r["agrees"] for r in per]
    return {
        "instrumental_only": instrumental_only,
        "threshold": {"voiced_ratio": cfg.vocal_voiced_ratio, "min_rms_db": cfg.vocal_min_rms_db},
        "per_section": per,
        "agreement": float(np.mean(agree)) if agree else None,
        "problems": problems,
    }


def evaluate_song(song: GeneratedSong | str | Path, cfg: EvalConfig | None = None) -> dict[str, Any]:
    """All structural checks of one song (sections, vocal presence, codes). Raises :class:`SongFolderError`."""
    from musiccore.audio import AudioError, load_audio

    cfg = cfg or EvalConfig()
    if not isinstance(song, GeneratedSong):
        song = load_song(song)
    sections = check_sections(song, cfg)
    codes = check_codes(song, cfg)
    wav = None
    sr = cfg.pitch_sample_rate
    if song.files["vocal"] is not None:
        try:
            wav, sr = load_audio(song.files["vocal"], sample_rate=cfg.pitch_sample_rate, mono=True)
        except AudioError as e:
            raise SongFolderError(str(e)) from e
    vocals = vocal_presence(wav, sr, song.sections, song.requested, cfg, song.instrumental_only)
    problems = sections["problems"] + codes["problems"] + vocals["problems"]
    return {
        "song": song.name,
        "folder": str(song.folder),
        "request": {k: song.meta["request"].get(k) for k in ("genre", "n_sections", "seed", "tracks")},
        "instrumental_only": song.instrumental_only,
        "files": {k: None if v is None else str(v) for k, v in song.files.items()},
        "timings": song.meta.get("timings"),
        "sections": sections,
        "codes": codes,
        "vocals": vocals,
        "ok": {"sections": not sections["problems"], "codes": not codes["problems"], "vocals": not vocals["problems"]},
        "problems": problems,
    }


# ============================================================================================ whole run


def _embed_all(embedder: HubertEmbedder, files: Sequence[Path], what: str) -> tuple[list[np.ndarray], list[dict]]:
    """Embed each file; a file that cannot be decoded is skipped with its reason. One log line per 10 files."""
    from musiccore.audio import AudioError

    embs, skipped = [], []
    t0 = time.time()
    for i, f in enumerate(files):
        try:
            embs.append(embedder.embed_file(f))
        except AudioError as e:
            skipped.append({"path": str(f), "reason": str(e)})
            log.warning("skip %s: %s", f, e)
        if (i + 1) % 10 == 0 or i + 1 == len(files):
            log.info("embedded %s %d/%d (%.1f s)", what, i + 1, len(files), time.time() - t0)
    return embs, skipped


def evaluate(
    generated_dir: str | Path,
    reference_dir: str | Path | None = None,
    embedder: HubertEmbedder | str | Path | None = None,
    config: EvalConfig | None = None,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate every song folder under ``generated_dir``; with a reference folder and an embedder also the
    Fréchet distance. Writes ``eval.json`` and ``eval.md`` into ``out_dir`` when given and returns the report dict.

    Raises:
        EvalInputError: no song folder (or no reference audio); EmbedderError: bad embedder folder/layer. A bad song
        folder or reference file is skipped and listed in ``report["skipped"]`` / ``report["reference_skipped"]``.
    """
    cfg = config or EvalConfig()
    if (reference_dir is None) != (embedder is None):
        raise EvalInputError("the Fréchet distance needs both a reference folder and an embedder (or neither)")
    t0 = time.time()
    exclude = [Path(out_dir)] if out_dir is not None else []
    folders, skipped = find_song_folders(generated_dir, exclude=exclude)
    ref_files = find_reference_files(reference_dir) if reference_dir is not None else []
    if embedder is not None and not isinstance(embedder, HubertEmbedder):
        embedder = HubertEmbedder(embedder, cfg)  # load before the long per-song work, so a bad folder fails early
    songs = []
    for i, folder in enumerate(folders):
        try:
            res = evaluate_song(folder, cfg)
        except SongFolderError as e:
            skipped.append({"path": str(folder), "reason": str(e)})
            log.warning("skip %s: %s", folder, e)
            continue
        songs.append(res)
        s = res["sections"]
        log.info("song %d/%d %s: sections %d/%d, vocals agree %s, codes %s, %d problems", i + 1, len(folders),
                 res["song"], s["present"], s["requested"], _pct(res["vocals"]["agreement"]),
                 "ok" if res["ok"]["codes"] else "BAD", len(res["problems"]))  # fmt: skip
    if not songs:
        raise EvalInputError(f"{generated_dir}: no song could be evaluated ({len(skipped)} skipped: "
                             f"{skipped[0]['reason'] if skipped else 'none found'})")  # fmt: skip

    frechet: dict[str, Any] | None = None
    ref_skipped: list[dict] = []
    if embedder is not None:
        from musiccore.eval.frechet import frechet_distance

        gen_files = [Path(s["files"]["mix"]) for s in songs if s["files"]["mix"] is not None]
        gen, gen_bad = _embed_all(embedder, gen_files, "generated")
        for x in gen_bad:  # the song's structural checks stand; only its embedding is missing
            x["reason"] = f"mix not embedded: {x['reason']}"
        ref, ref_skipped = _embed_all(embedder, ref_files, "reference")
        skipped += gen_bad
        frechet = {"value": None, "n_generated": len(gen), "n_reference": len(ref), "dim": embedder.hidden_size,
                   "embedder": embedder.describe(), "note": None}  # fmt: skip
        if len(gen) < 2 or len(ref) < 2:
            frechet["note"] = "needs at least 2 songs on each side"
        else:
            frechet["value"] = frechet_distance(np.stack(gen), np.stack(ref))
            if min(len(gen), len(ref)) <= embedder.hidden_size:
                frechet["note"] = (f"fewer songs than embedding dimensions ({embedder.hidden_size}): singular "
                                   "covariances, biased value; compare only at equal set sizes")  # fmt: skip
        log.info("Fréchet distance %s (%d generated vs %d reference songs)",
                 "n/a" if frechet["value"] is None else f"{frechet['value']:.4g}", len(gen), len(ref))  # fmt: skip

    report = {
        "generated_dir": str(generated_dir),
        "reference_dir": None if reference_dir is None else str(reference_dir),
        "config": asdict(cfg),
        "frechet": frechet,
        "summary": _summary(songs, skipped),
        "songs": songs,
        "skipped": skipped,
        "reference_skipped": ref_skipped,
        "elapsed_s": round(time.time() - t0, 2),
    }
    if out_dir is not None:
        write_report(report, out_dir)
    return report


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _summary(songs: list[dict], skipped: list[dict]) -> dict[str, Any]:
    req = sum(s["sections"]["requested"] for s in songs)
    present = sum(s["sections"]["requested"] - len(s["sections"]["missing"]) for s in songs)
    rows = [r for s in songs for r in s["vocals"]["per_section"]]
    return {
        "songs": len(songs),
        "skipped": len(skipped),
        "sections_requested": req,
        "sections_present": present,
        "songs_all_sections": sum(not s["sections"]["missing"] for s in songs),
        "total_s": float(sum(s["sections"]["total_s"] for s in songs)),
        "vocal_agreement": float(np.mean([r["agrees"] for r in rows])) if rows else None,
        "songs_codes_ok": sum(s["ok"]["codes"] for s in songs),
        "songs_without_problems": sum(not s["problems"] for s in songs),
    }


def render_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: Fréchet distance, summary, one table row per song, per-section details, skips."""
    sm = report["summary"]
    lines = [f"# yue eval: {report['generated_dir']}", ""]
    fr = report.get("frechet")
    if fr is None:
        lines.append("Fréchet distance: not computed (no reference folder / embedder given).")
    else:
        val = "n/a" if fr["value"] is None else f"**{fr['value']:.4g}**"
        emb = fr["embedder"]
        lines.append(f"Fréchet distance: {val} ({fr['n_generated']} generated vs {fr['n_reference']} reference "
                     f"songs from {report['reference_dir']}; embedder {emb['folder']}, layer {emb['layer']}, "
                     f"{emb['hidden_size']} dims, {emb['sample_rate']} Hz)")  # fmt: skip
        if fr["note"]:
            lines.append(f"Note: {fr['note']}.")
    lines += [
        "",
        f"Songs: {sm['songs']} evaluated, {sm['skipped']} skipped. Sections present: {sm['sections_present']}/"
        f"{sm['sections_requested']}. Vocal presence agrees with the request in {_pct(sm['vocal_agreement'])} of "
        f"sections. Codes in range and consistent: {sm['songs_codes_ok']}/{sm['songs']} songs. Total audio "
        f"{sm['total_s']:.1f} s.",
        "",
        "| song | sections | total s | vocals agree | codes | problems |",
        "|---|---|---|---|---|---|",
    ]
    for s in report["songs"]:
        sec = s["sections"]
        lines.append(f"| {s['song']} | {sec['present']}/{sec['requested']} | {sec['total_s']:.2f} | "
                     f"{_pct(s['vocals']['agreement'])} | {'ok' if s['ok']['codes'] else 'BAD'} | "
                     f"{len(s['problems'])} |")  # fmt: skip
    for s in report["songs"]:
        lines += ["", f"## {s['song']}" + (" (instrumental-only request)" if s["instrumental_only"] else ""), "",
                  "| # | label | requested | start s | end s | frames | status | vocals expected | voiced | detected |",
                  "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        vox = {r["index"]: r for r in s["vocals"]["per_section"]}
        for r in s["sections"]["per_section"]:
            v = vox.get(r["index"], {})
            lines.append(f"| {r['index']} | {r['label']} | {r['requested_label'] or '-'} | {r['start_s']:.2f} | "
                         f"{r['end_s']:.2f} | {r['frames']} | {r['status']} | {'yes' if v.get('expected') else 'no'} "
                         f"| {v.get('voiced_ratio', 0):.0%} | {'yes' if v.get('detected') else 'no'} |")  # fmt: skip
        for m in s["sections"]["missing"]:
            if m["index"] >= len(s["sections"]["per_section"]):
                lines.append(f"| {m['index']} | - | {m['label']} | - | - | - | missing | - | - | - |")
        if s["problems"]:
            lines += ["", "Problems:", ""] + [f"- {p}" for p in s["problems"]]
    if report["skipped"] or report.get("reference_skipped"):
        lines += ["", "## Skipped", ""]
        lines += [f"- {x['path']}: {x['reason']}" for x in report["skipped"]]
        lines += [f"- reference {x['path']}: {x['reason']}" for x in report.get("reference_skipped", [])]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``eval.json`` and ``eval.md`` into ``out_dir`` atomically; returns their paths."""
    from musiccore.runs import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(out / "eval.json", report), atomic_write_text(out / "eval.md", render_markdown(report))
