"""End to end: request -> stage 1 -> stage 2 -> codec (+ Vocos upsamplers) -> an output folder.

Output folder (all files written to a temporary name and renamed)::

    stage1_ids.npy            int32 [N]   the whole stage-1 sequence: head (+ICL), every section's prompt and codes
    stage2_vocal.npy          int16 [8, T] (absent for tracks=instrumental)
    stage2_instrumental.npy   int16 [8, T] (absent for tracks=vocal)
    vocals.wav instrumental.wav mix.wav   44.1 kHz with upsamplers (mix low band post-processed), else 16 kHz
    song.json                 request, settings, timings, sections (seconds), sample_rate, files
    state.json                resume state (request, settings, finished sections, finished stages)

Resume: ``state.json`` is rewritten after every stage-1 section and after each stage; a rerun with the same request
and settings continues from there (finished sections are reused, each section/batch has its own seed, so the result
equals an uninterrupted run). A folder holding another request or other settings is refused.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from yue.generate.config import GenerateConfig
from yue.generate.request import (FRAME_RATE, GenerateInputError, SongRequest, TRACKS, check_prompt_window,
                                  check_tags, parse_sections, read_genre, read_requests)  # fmt: skip
from yue.generate.stage1 import Stage1Plan, run_stage1
from yue.generate.stage2 import run_stage2

log = logging.getLogger(__name__)

__all__ = ["PreparedSong", "prepare_request", "Models", "generate_song", "generate", "generate_batch", "SONG_KEYS"]

SONG_KEYS = ("request", "settings", "timings", "sections", "sample_rate", "files")
TRACK_NAMES = ("vocal", "instrumental")
WAV_NAMES = {"vocal": "vocals.wav", "instrumental": "instrumental.wav"}


@dataclass
class PreparedSong:
    """A checked request: sections, stage-1 plan (ICL block still to be encoded) and context budget."""

    request: SongRequest
    genre: str
    sections: list  # all lyrics sections (the head holds all of them)
    generate: list  # the sections to generate
    plan: Stage1Plan
    max_context: int
    tok: object
    unknown_tags: list[str] = field(default_factory=list)


def _read_max_context(folder: str | None, cfg: GenerateConfig) -> int:
    from yue.lm.model import LMLoadError

    if cfg.stage1.max_context:
        return int(cfg.stage1.max_context)
    if not folder:
        raise GenerateInputError("no stage-1 model folder (models.stage1 / --stage1)")
    p = Path(folder) / "config.json"
    try:
        return int(json.loads(p.read_text())["max_position_embeddings"])
    except (OSError, KeyError, ValueError) as e:
        raise LMLoadError(f"{p}: cannot read max_position_embeddings ({e})") from e


def prepare_request(req: SongRequest, cfg: GenerateConfig, tok=None) -> PreparedSong:
    """Check a request without loading any model; raise :class:`GenerateInputError` naming what is wrong."""
    from yue.lm.model import load_tokenizer_for
    from yue.sequences import MARKERS, head_text, stage1_section_prompt

    if req.tracks not in TRACKS:
        raise GenerateInputError(f"tracks={req.tracks!r}: expected one of {TRACKS}")
    genre = read_genre(req.genre)
    sections = parse_sections(req)
    n = len(sections) if req.n_sections is None else req.n_sections
    if not 1 <= n <= len(sections):
        raise GenerateInputError(f"n_sections={req.n_sections}: the lyrics have {len(sections)} sections")
    unknown = check_tags(genre, cfg.unknown_tags)
    if req.audio_prompt is not None:
        check_prompt_window(req.audio_prompt)
    if cfg.models.stage1 is None or cfg.models.stage2 is None or cfg.models.codec is None:
        missing = [k for k in ("stage1", "stage2", "codec") if getattr(cfg.models, k) is None]
        raise GenerateInputError(f"model folders missing: {missing} (config models.* or --stage1/--stage2/--codec)")
    if cfg.stage2.chunk_frames is None:  # as the stage-2 LM was trained (resolved in place, so song.json records it)
        from yue.lm.model import lm_info

        cfg.stage2.chunk_frames = int(lm_info(cfg.models.stage2).get("stage2_chunk_frames") or 300)
    tok = tok or load_tokenizer_for(cfg.models.stage1, cfg.models.tokenizer)
    head = tok.tokenize(head_text(genre, sections))
    prompts = [stage1_section_prompt(tok, s, True) for s in sections[:n]]
    plan = Stage1Plan(head, prompts, tok.tokenize(MARKERS["end_of_segment"]), tok.id("<EOA>"))
    max_ctx = _read_max_context(cfg.models.stage1, cfg)
    icl = 0
    if req.audio_prompt is not None:  # markers + <SOA> <xcodec> ... <EOA>
        per = 2 if req.audio_prompt.mode == "dual" else 1
        icl = per * req.audio_prompt.frames() + 3 + len(tok.tokenize(MARKERS["start_of_reference"])) * 2
    need = len(head) + icl + len(plan.end_of_segment) + max(len(p) for p in prompts) + cfg.stage1.max_new_tokens + 1
    if need > max_ctx:
        raise GenerateInputError(
            f"lyrics too long for the stage-1 context at {n} sections: head {len(head)} ids (genre + all lyrics) + "
            f"ICL {icl} + longest section prompt {max(len(p) for p in prompts)} + max_new_tokens "
            f"{cfg.stage1.max_new_tokens} + 1 = {need} > {max_ctx} tokens (shorten the lyrics or lower "
            "stage1.max_new_tokens)"
        )
    return PreparedSong(req, genre, sections, sections[:n], plan, max_ctx, tok, unknown)


# ---- models -----------------------------------------------------------------------------------------------------
def _device_dtype(cfg: GenerateConfig) -> tuple[torch.device, torch.dtype]:
    dev = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(dev)
    names = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if cfg.dtype == "auto":
        return device, (torch.bfloat16 if device.type == "cuda" else torch.float32)
    return device, names[cfg.dtype]


class Models:
    """Lazily loaded models of one configuration (shared across the songs of a batch)."""

    def __init__(self, cfg: GenerateConfig, keep: bool = False):
        self.cfg, self.keep = cfg, keep
        self.device, self.dtype = _device_dtype(cfg)
        self._s1 = self._s2 = self._codec = None
        self._ups: dict | None = None
        self._silence: int | None = None

    def stage1(self):
        if self._s1 is None:
            from yue.lm.model import load_lm

            log.info("loading stage-1 LM %s (%s, %s)", self.cfg.models.stage1, self.device, self.dtype)
            self._s1 = load_lm(self.cfg.models.stage1, self.cfg.models.tokenizer, self.device, self.dtype)[0]
        return self._s1

    def stage2(self):
        if self._s2 is None:
            from yue.lm.model import load_lm

            log.info("loading stage-2 LM %s", self.cfg.models.stage2)
            self._s2 = load_lm(self.cfg.models.stage2, self.cfg.models.tokenizer, self.device, self.dtype)[0]
        return self._s2

    def release_stage1(self) -> None:
        """Free the stage-1 LM before stage 2 (upstream offloads it) unless models are kept for a batch."""
        if not self.keep and self._s1 is not None:
            self._s1 = None
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def codec(self):
        if self._codec is None:
            from yue.codec import XCodec

            self._codec = XCodec.from_pretrained(self.cfg.models.codec, device=str(self.device))
        return self._codec

    def upsamplers(self) -> dict | None:
        """``{"vocal": VocosDecoder, "instrumental": VocosDecoder}`` or None (16 kHz output)."""
        if self.cfg.models.upsampler is None:
            return None
        if self._ups is None:
            from yue.codec.vocos import VocosConfig, VocosDecoder, VocosLoadError

            folder = Path(self.cfg.models.upsampler)
            if not (folder / "vocos_config.yaml").is_file():
                raise VocosLoadError(f"{folder}: no vocos_config.yaml (a converted codec folder holds the upsamplers)")
            vc = VocosConfig.from_yaml(folder / "vocos_config.yaml")
            self._ups = {
                name: VocosDecoder(vc).load_weights(folder / f"{fn}_upsampler.safetensors").to(self.device).eval()
                for name, fn in (("vocal", "vocal"), ("instrumental", "inst"))
            }
        return self._ups

    def silence_code(self) -> int:
        """Codebook-0 code of digital silence (1 s of zeros through the codec's encoder, most frequent code)."""
        if self._silence is None:
            codes = self.codec().encode(torch.zeros(1, 1, self.codec().sample_rate), target_bw=0.5)[0, 0]
            self._silence = int(torch.bincount(codes.cpu()).argmax())
        return self._silence


# ---- helpers ----------------------------------------------------------------------------------------------------
def _save_npy(path: Path, arr: np.ndarray) -> None:
    from musiccore.runs import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)


def _encode_prompt(models: Models, prepared: PreparedSong) -> list[int]:
    """The ICL block ids: files -> mono 16 kHz -> ``XCodec.encode`` at 0.5 kbps -> the released crop."""
    from musiccore.audio import load_audio
    from yue.codec import prepare_waveform
    from yue.sequences import Reference, _reference_ids

    ap = prepared.request.audio_prompt
    codec = models.codec()
    codes = []
    for p in ap.paths:
        wav, sr = load_audio(p)
        mono = prepare_waveform(wav, sr, codec.sample_rate, where=str(p))
        codes.append(codec.encode(torch.as_tensor(mono)[None, None], target_bw=0.5)[0, 0].cpu().numpy())
    a, b = int(ap.start * FRAME_RATE), int(ap.end * FRAME_RATE)
    if ap.mode == "dual":
        n = min(len(codes[0]), len(codes[1]))  # interleaved [start*100 : end*100] = frames start*50 .. end*50
        ref = Reference("dual", codes[0][:n][a:b], codes[1][:n][a:b])
    else:
        ref = Reference("single", codes[0][a:b])
    if ref.vocal.shape[0] < 1:
        raise GenerateInputError(f"audio prompt {ap.paths}: the window {ap.start}..{ap.end} s holds no codec frame")
    return _reference_ids(prepared.tok, ref)


def _state_key(prepared: PreparedSong, cfg: GenerateConfig) -> dict:
    from musiccore.config import to_dict

    return {"request": prepared.request.to_json(), "stage1": to_dict(cfg.stage1), "stage2": to_dict(cfg.stage2),
            "models": to_dict(cfg.models)}  # fmt: skip


def _load_state(out: Path, key: dict) -> dict:
    p = out / "state.json"
    fresh = {"key": key, "stage1_sections": [], "icl": None, "stage1_done": False, "stage2_done": False,
             "timings": {"stage1_s": 0.0, "stage2_s": 0.0, "decode_s": 0.0}}  # fmt: skip
    if not p.is_file():
        return fresh
    try:
        state = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GenerateInputError(f"{p}: unreadable resume state ({e}); use a new --out folder") from None
    if not isinstance(state, dict):
        raise GenerateInputError(f"{p}: resume state is not a JSON object; use a new --out folder")
    if json.loads(json.dumps(state.get("key"))) != json.loads(json.dumps(key)):
        if not state.get("stage1_sections") and not state.get("stage1_done") and not state.get("stage2_done"):
            # Nothing generated yet (e.g. the first run stopped on a wrong model path after encoding the prompt):
            # the corrected rerun takes the folder over instead of being refused.
            log.warning("%s: state.json of another request/settings holds no finished section; starting afresh", out)
            return fresh
        raise GenerateInputError(
            f"{out}: holds a run of another request or other settings (state.json); use a new --out folder"
        )
    return state


def _tracks_from_stage1(prepared: PreparedSong, sections: list[list[int]]) -> tuple[list[np.ndarray], list[int]]:
    """De-interleave the generated sections: vocal ``[T]``, instrumental ``[T]`` codes and frames per section."""
    xc = prepared.tok.layout.xcodec
    v, i, frames = [], [], []
    for ids in sections:
        body = np.asarray(ids[:-1], dtype=np.int64)  # drop <EOA>
        body = body[: body.size - body.size % 2]  # upstream truncates an odd tail
        codes = xc.ids_to_codes(body, n=1, begin=0, strict=True)[0]
        v.append(codes[0::2])
        i.append(codes[1::2])
        frames.append(body.size // 2)
    return [np.concatenate(v), np.concatenate(i)], frames


def _stage1_document(prepared: PreparedSong, sections: list[list[int]]) -> list[int]:
    """Head + every section's prompt + generated ids + ``[end_of_segment]`` (``yue.sequences.parse_stage1`` reads it)."""
    plan = prepared.plan
    ids = list(plan.head)
    for p, s in zip(plan.prompts, sections):
        ids += p + s + plan.end_of_segment
    return ids


# ---- one song ---------------------------------------------------------------------------------------------------
def generate_song(request: SongRequest, out_dir, cfg: GenerateConfig, models: Models | None = None,
                  prepared: PreparedSong | None = None, on_section=None) -> dict:  # fmt: skip
    """Generate one song into ``out_dir`` (resuming whatever a previous run there finished); returns song.json.

    Args:
        request: what to generate.
        cfg: model folders and settings.
        models: loaded models to reuse (batch mode); built lazily from ``cfg`` when omitted.
        on_section: ``f(k, sections)`` after each finished stage-1 section (after its state is saved).

    Raises:
        GenerateInputError: bad request (checked before any model is loaded).
    """
    from musiccore.config import to_dict
    from musiccore.runs import atomic_write_json

    t_start = time.perf_counter()
    prepared = prepared or prepare_request(request, cfg)
    out = Path(out_dir)
    if (out / "song.json").is_file() and (out / "state.json").is_file():
        _load_state(out, _state_key(prepared, cfg))  # refuses a folder of another request/settings
        log.info("%s: already finished", out)
        return json.loads((out / "song.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    key = _state_key(prepared, cfg)
    state = _load_state(out, key)
    models = models or Models(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tok = prepared.tok
    layout = tok.layout

    def save_state():
        atomic_write_json(out / "state.json", state)

    # ---- ICL block and forced tracks (need the codec, not the LMs)
    if prepared.request.audio_prompt is not None:
        if state["icl"] is None:
            state["icl"] = _encode_prompt(models, prepared)
            save_state()
        prepared.plan.head = prepared.plan.head + [int(x) for x in state["icl"]]
    if prepared.request.tracks != "both":
        silent = layout.xcodec.offset(0) + models.silence_code()
        prepared.plan.forced = {0: silent} if prepared.request.tracks == "instrumental" else {1: silent}

    # ---- stage 1
    if not state["stage1_done"]:
        t0 = time.perf_counter()

        def saved(k, sections, contexts):
            state["stage1_sections"] = [list(map(int, s)) for s in sections]
            state["stage1_contexts"] = contexts
            state["timings"]["stage1_s"] = state["timings"].get("stage1_s", 0.0) + (time.perf_counter() - saved.t)
            saved.t = time.perf_counter()
            save_state()
            if on_section is not None:
                on_section(k, sections)

        saved.t = t0
        res = run_stage1(models.stage1(), layout, prepared.plan, cfg.stage1, seed=prepared.request.seed,
                         done=state["stage1_sections"], on_section=saved,
                         labels=[s.label for s in prepared.generate], log_every=cfg.log_every)  # fmt: skip
        _save_npy(out / "stage1_ids.npy", np.asarray(_stage1_document(prepared, res.sections), dtype=np.int32))
        state["stage1_done"] = True
        save_state()
    models.release_stage1()
    tracks, frames = _tracks_from_stage1(prepared, state["stage1_sections"])
    active = [n for n in TRACK_NAMES if prepared.request.tracks in ("both", n)]

    # ---- stage 2
    if not state["stage2_done"]:
        todo = [tracks[TRACK_NAMES.index(n)] for n in active]
        codes, dt = run_stage2(models.stage2(), layout, todo, cfg.stage2, seed=prepared.request.seed,
                               log_every=cfg.log_every)  # fmt: skip
        for n, c in zip(active, codes):
            _save_npy(out / f"stage2_{n}.npy", c.astype(np.int16))
        state["stage2_done"] = True
        state["timings"]["stage2_s"] += dt
        save_state()

    # ---- audio
    t0 = time.perf_counter()
    sr = _write_audio(models, out, active)
    state["timings"]["decode_s"] += time.perf_counter() - t0
    state["timings"]["total_s"] = state["timings"].get("total_s", 0.0) + (time.perf_counter() - t_start)
    save_state()
    bounds, t = [], 0
    for s, f in zip(prepared.generate, frames):
        bounds.append({"label": s.label, "start_s": t / FRAME_RATE, "end_s": (t + f) / FRAME_RATE, "frames": f})
        t += f
    ap = prepared.request.audio_prompt
    song = {
        "request": {"genre": prepared.genre, "lyrics": prepared.request.lyrics,
                    "sections": [{"label": s.label, "text": s.text} for s in prepared.generate],
                    "n_sections": len(prepared.generate), "audio_prompt": ap.to_json() if ap else None,
                    "seed": prepared.request.seed, "tracks": prepared.request.tracks},
        "settings": {"stage1": to_dict(cfg.stage1), "stage2": to_dict(cfg.stage2),
                     "models": {**to_dict(cfg.models), "tokenizer": str(tok.path)},  # the tokenizer actually used
                     "xcodec": dataclasses.asdict(layout.xcodec),
                     "device": str(models.device), "dtype": str(models.dtype).replace("torch.", "")},
        "timings": {k: round(float(state["timings"].get(k, 0.0)), 3) for k in ("stage1_s", "stage2_s", "decode_s",
                                                                                "total_s")},
        "sections": bounds,
        "sample_rate": sr,
        "files": {"vocal": WAV_NAMES["vocal"] if "vocal" in active else None,
                  "instrumental": WAV_NAMES["instrumental"] if "instrumental" in active else None,
                  "mix": "mix.wav", "stage1_ids": "stage1_ids.npy",
                  "stage2_vocal": "stage2_vocal.npy" if "vocal" in active else None,
                  "stage2_instrumental": "stage2_instrumental.npy" if "instrumental" in active else None},
    }  # fmt: skip
    atomic_write_json(out / "song.json", song)
    log.info("song -> %s (%.1f s of audio; stage1 %.1f s, stage2 %.1f s, decode %.1f s)", out, t / FRAME_RATE,
             *(state["timings"][k] for k in ("stage1_s", "stage2_s", "decode_s")))  # fmt: skip
    return song


@torch.no_grad()
def _write_audio(models: Models, out: Path, active: list[str]) -> int:
    """Decode ``stage2_*.npy`` -> stems and mix (upstream's vocoder path + low-band post-processing of the mix)."""
    from musiccore.audio import write_audio
    from musiccore.runs import atomic_path

    codec = models.codec()
    ups = models.upsamplers()
    low, high = {}, {}
    for n in active:
        codes = np.load(out / f"stage2_{n}.npy").astype(np.int64)
        low[n] = codec.decode(codes[None])[0, 0].float().cpu().numpy()  # 16 kHz
        if ups is not None:
            high[n] = ups[n](codec.get_embed(codes[None]))[0].float().cpu().numpy()  # 44.1 kHz
    if ups is None:
        sr, stems = codec.sample_rate, low
        mix = sum(low.values())
    else:
        from yue.codec.postprocess import replace_low_freq_with_energy_matched

        sr, stems = ups["vocal"].sample_rate, high
        mix = replace_low_freq_with_energy_matched(sum(low.values()), codec.sample_rate, sum(high.values()), sr)[0]
    for n, wav in list(stems.items()) + [("mix", mix)]:
        dst = out / (WAV_NAMES.get(n, "mix.wav"))
        with atomic_path(dst, suffix=".wav") as tmp:
            write_audio(tmp, np.clip(wav, -0.99, 0.99), sr)
    return int(sr)


def generate(stage1: str, stage2: str, codec: str, genre: str, lyrics: str, out_dir, upsampler: str | None = None,
             overrides=(), **request) -> dict:  # fmt: skip
    """Smallest API (for ``yue demo``): model folders, genre, lyrics (text or file) -> ``out_dir``; returns song.json.

    ``request`` takes the other :class:`SongRequest` fields (``n_sections``, ``seed``, ``tracks``, ``audio_prompt``);
    ``overrides`` are ``key=value`` settings (e.g. ``"stage1.max_new_tokens=200"``).
    """
    from yue.generate.config import load_generate_config

    cfg = load_generate_config(None, [f"models.stage1={stage1}", f"models.stage2={stage2}", f"models.codec={codec}"]
                               + ([f"models.upsampler={upsampler}"] if upsampler else []) + list(overrides))  # fmt: skip
    return generate_song(SongRequest(genre=genre, lyrics=lyrics, **request), out_dir, cfg)


# ---- batch ------------------------------------------------------------------------------------------------------
def generate_batch(requests_file, out_root, cfg: GenerateConfig, shard: tuple[int, int] = (0, 1)) -> dict:
    """Generate every request of a jsonl (rows ``i::n`` for ``shard=(i, n)``), one folder each.

    Finished folders (``song.json``) are skipped, bad rows and failing songs are reported and skipped.

    Returns:
        ``{"done": [...], "skipped": [...], "failed": [(name, why), ...]}``
    """
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise GenerateInputError(f"shard {i}/{n}: expected 0 <= i < n")
    rows = read_requests(requests_file)[i::n]
    out_root = Path(out_root)
    report = {"done": [], "skipped": [], "failed": []}
    models = Models(cfg, keep=True)
    for k, row in enumerate(rows):
        dst = out_root / row.name
        if row.error:
            report["failed"].append((row.name, row.error))
            log.error("skip %s", row.error)
            continue
        if (dst / "song.json").is_file():
            report["skipped"].append(row.name)
            continue
        try:
            generate_song(row.request, dst, cfg, models)
            report["done"].append(row.name)
        except (GenerateInputError, ValueError, OSError) as e:
            report["failed"].append((row.name, f"{requests_file}:{row.line}: {type(e).__name__}: {e}"))
            log.error("failed %s (line %d): %s", row.name, row.line, e)
        log.info("batch %d/%d: %d done, %d skipped, %d failed", k + 1, len(rows), len(report["done"]),
                 len(report["skipped"]), len(report["failed"]))  # fmt: skip
    return report
