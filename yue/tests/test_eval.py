"""`yue eval`: Fréchet distance from a local HubertModel folder, sections, vocal presence, codes, bad input.

Everything is synthesised in the test: a tiny random ``transformers.HubertModel`` folder and song folders whose
vocal stem holds a harmonic tone in the sections with lyrics and silence in the instrumental ones.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yue.codec_ids import RELEASED_XCODEC
from yue.evaluate import (
    EmbedderError,
    EvalConfig,
    EvalInputError,
    GeneratedSong,
    HubertEmbedder,
    SongFolderError,
    check_codes,
    check_sections,
    evaluate,
    find_reference_files,
    load_song,
    vocal_presence,
)

SR = 16000
FPS = 50
CB0 = RELEASED_XCODEC.id_range(0, 1)[0]  # 45334


def tone(seconds: float, f0: float, sr: int = SR) -> np.ndarray:
    """A voiced, sung-like harmonic tone with a little vibrato, [T] float32."""
    t = np.arange(int(round(seconds * sr))) / sr
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))) / sr
    return (0.3 * sum(np.sin(k * phase) / k for k in range(1, 5))).astype(np.float32)


def write_song(
    folder: Path,
    sections=(("verse", "la la la", 2.0), ("inst", "", 1.5), ("chorus", "oh oh", 2.0)),
    generated: int | None = None,
    f0: float = 220.0,
    vocal_everywhere: bool = False,
    seed: int = 0,
    n_sections: int | None = None,
    tok=None,
    tracks: str = "both",
) -> Path:
    """A song folder as `yue generate` writes it (16 kHz, no upsampler); ``generated`` sections actually made.

    ``stage1_ids.npy`` is the whole stage-1 document of ``tok`` (as `yue generate` writes it) when a tokenizer is
    given, else bare interleaved codebook-0 ids. ``tracks="instrumental"`` leaves out the vocal files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    made = sections[: len(sections) if generated is None else generated]
    vocal, inst, secs, start = [], [], [], 0.0
    for label, text, dur in made:
        n = int(round(dur * SR))
        vocal.append(tone(dur, f0) if (text or vocal_everywhere) else np.zeros(n, np.float32))
        inst.append((0.05 * rng.standard_normal(n)).astype(np.float32))
        secs.append({"label": label, "start_s": start, "end_s": start + dur, "frames": int(round(dur * FPS))})
        start += dur
    v, i = np.concatenate(vocal), np.concatenate(inst)
    sf.write(folder / "vocals.wav", v, SR)
    sf.write(folder / "instrumental.wav", i, SR)
    sf.write(folder / "mix.wav", np.clip(v + i, -1, 1), SR)
    t = sum(s["frames"] for s in secs)
    cb0 = rng.integers(0, 1024, size=(2, t))
    if tok is None:
        np.save(folder / "stage1_ids.npy", (cb0 + CB0).T.reshape(-1).astype(np.int32))  # v0 i0 v1 i1 ...
    else:
        from yue.lyrics import Section
        from yue.sequences import Stage1Song, build_stage1

        cuts = np.cumsum([0] + [s["frames"] for s in secs])
        doc = Stage1Song("pop", [Section(label, text) for label, text, _ in made],
                         [cb0[0, a:b] for a, b in zip(cuts, cuts[1:])], [cb0[1, a:b] for a, b in zip(cuts, cuts[1:])])
        np.save(folder / "stage1_ids.npy", np.asarray(build_stage1(tok, doc), np.int32))  # fmt: skip
    for k, track in enumerate(("vocal", "instrumental")):
        codes = rng.integers(0, 1024, size=(8, t))
        codes[0] = cb0[k]  # stage 2 copies codebook 0 from stage 1
        np.save(folder / f"stage2_{track}.npy", codes.astype(np.int16))
    meta = {
        "request": {"genre": "pop", "lyrics": "", "sections": [{"label": s[0], "text": s[1]} for s in sections],
                    "n_sections": n_sections, "audio_prompt": None, "seed": seed},
        "settings": {"models": {"tokenizer": str(tok.path) if tok is not None else None}}, "timings": {"stage1_s": 1.0, "stage2_s": 1.0, "decode_s": 0.1, "total_s": 2.1},
        "sections": secs, "sample_rate": SR,
        "files": {"vocal": "vocals.wav", "instrumental": "instrumental.wav", "mix": "mix.wav",
                  "stage1_ids": "stage1_ids.npy", "stage2_vocal": "stage2_vocal.npy",
                  "stage2_instrumental": "stage2_instrumental.npy"},
    }  # fmt: skip
    meta["request"]["tracks"] = tracks
    if tracks == "instrumental":  # as `yue generate` does: no vocal stem, no vocal stage-2 codes
        for key, name in (("vocal", "vocals.wav"), ("stage2_vocal", "stage2_vocal.npy")):
            meta["files"][key] = None
            (folder / name).unlink()
    (folder / "song.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def hubert_dir(tmp_path_factory) -> Path:
    """A tiny random transformers.HubertModel folder (2 layers, 16 dims), saved with save_pretrained."""
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    cfg = HubertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                       conv_dim=(8,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)  # fmt: skip
    out = tmp_path_factory.mktemp("hubert")
    HubertModel(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def songs_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("generated")
    for k, f0 in enumerate((180.0, 220.0, 260.0)):
        write_song(root / f"song{k}", f0=f0, seed=k)
    return root


# ------------------------------------------------------------------------------------------ Fréchet


def test_frechet_self_is_zero_and_a_different_set_is_far(songs_dir, hubert_dir, tmp_path):
    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(1)
    for k in range(3):  # a clearly different set: loud white noise, no tone
        sf.write(noise / f"n{k}.wav", (0.5 * rng.standard_normal(SR * 4)).astype(np.float32), SR)
    emb = HubertEmbedder(hubert_dir, EvalConfig(window_s=2.0))  # 2 s windows: several per song, a short tail
    same = evaluate(songs_dir, songs_dir, emb)["frechet"]
    other = evaluate(songs_dir, noise, emb)["frechet"]
    assert same["n_generated"] == same["n_reference"] == 3 and other["n_reference"] == 3
    assert abs(same["value"]) < 1e-4 * other["value"]
    assert other["value"] > 1e-3
    assert "biased" in other["note"]  # 3 songs < 16 dims is said out loud


def test_embedding_is_chunk_independent_and_resampled(hubert_dir, tmp_path):
    """A song streamed in windows gives the frame-weighted mean; a 48 kHz file is resampled to the model's rate."""
    y = tone(3.0, 200.0)
    cfg_one, cfg_win = EvalConfig(window_s=3.0), EvalConfig(window_s=1.0, batch_size=2)
    one = HubertEmbedder(hubert_dir, cfg_one).embed_wave(y, SR)
    win = HubertEmbedder(hubert_dir, cfg_win).embed_wave(y, SR)
    assert one.shape == (16,) and np.isfinite(one).all()
    # Windows see less context than one pass, so equality is not exact, but they must be close (same song).
    assert np.linalg.norm(one - win) < 0.25 * np.linalg.norm(one)
    from musiccore.audio import resample

    sf.write(tmp_path / "a48.wav", resample(y, SR, 48000)[0], 48000)
    from_file = HubertEmbedder(hubert_dir, cfg_one).embed_file(tmp_path / "a48.wav")
    np.testing.assert_allclose(from_file, one, rtol=0.05, atol=1e-3)


def test_sample_rate_and_layers_come_from_the_folder(hubert_dir, tmp_path):
    from transformers import Wav2Vec2FeatureExtractor

    mert_like = tmp_path / "mert_like"
    shutil.copytree(hubert_dir, mert_like)
    cfg = json.loads((mert_like / "config.json").read_text())
    cfg["sample_rate"] = 24000  # what `mert export-hf` writes
    (mert_like / "config.json").write_text(json.dumps(cfg))
    assert HubertEmbedder(mert_like).sample_rate == 24000
    Wav2Vec2FeatureExtractor(sampling_rate=22050, do_normalize=True).save_pretrained(mert_like)
    e = HubertEmbedder(mert_like, EvalConfig(layer="mean"))
    assert e.sample_rate == 22050 and e.describe()["normalize"] is True  # the feature extractor file wins
    y = tone(1.0, 200.0)
    last = HubertEmbedder(hubert_dir, EvalConfig(layer=-1)).embed_wave(y, SR)
    first = HubertEmbedder(hubert_dir, EvalConfig(layer=0)).embed_wave(y, SR)
    assert not np.allclose(last, first)
    with pytest.raises(EmbedderError, match="layer 5 does not exist"):
        HubertEmbedder(hubert_dir, EvalConfig(layer=5))


# ------------------------------------------------------------------------------------------ sections / vocals / codes


def test_missing_section_is_flagged(tmp_path):
    song = write_song(tmp_path / "short", generated=2)  # 3 requested, 2 generated (upstream's off-by-one)
    rep = evaluate(tmp_path)
    s = rep["songs"][0]
    assert s["sections"]["missing"] == [{"index": 2, "label": "chorus"}]
    assert s["ok"]["sections"] is False
    assert "requested section 2 [chorus] is missing" in s["problems"]
    assert rep["summary"]["sections_present"] == 2 and rep["summary"]["sections_requested"] == 3
    # n_sections limits what was requested: the same folder asked for 2 sections is complete.
    meta = json.loads((song / "song.json").read_text())
    meta["request"]["n_sections"] = 2
    (song / "song.json").write_text(json.dumps(meta))
    ok = evaluate(tmp_path)["songs"][0]
    assert ok["sections"]["missing"] == [] and ok["ok"]["sections"] is True


def test_durations_and_boundaries_checked(tmp_path):
    folder = write_song(tmp_path / "s")
    meta = json.loads((folder / "song.json").read_text())
    meta["sections"][1]["frames"] = 10  # 1.5 s is 75 frames
    meta["sections"][2]["start_s"] += 0.5  # a gap
    meta["sections"][2]["label"] = "bridge"
    (folder / "song.json").write_text(json.dumps(meta))
    res = check_sections(load_song(folder), EvalConfig())
    text = "\n".join(res["problems"])
    assert "frames 10 != 75" in text and "starts at 4.000 s, previous ends at 3.500 s" in text
    assert "generated [bridge] where [chorus] was requested" in text
    assert res["audio_s"]["mix"] == pytest.approx(5.5)
    assert res["section_bounds_s"] == [1.0, 30.0] and "outside" not in text  # 1.5-2 s sections are fine
    # the song's own stage-1 settings give the bounds: at least 400 ids = 4 s per section
    meta["settings"]["stage1"] = {"min_new_tokens": 400, "max_new_tokens": 3000}
    (folder / "song.json").write_text(json.dumps(meta))
    res = check_sections(load_song(folder), EvalConfig())
    assert res["section_bounds_s"] == [4.0, 30.0]
    assert "section 0 [verse]: duration 2.00 s outside 4..30 s" in res["problems"]
    # the section total (5.5 s) no longer matches once a file is cut
    sf.write(folder / "mix.wav", np.zeros(SR * 4, np.float32), SR)
    assert any("mix.wav: 4.000 s of audio" in p for p in check_sections(load_song(folder), EvalConfig())["problems"])


def test_vocal_presence_follows_the_tone(tmp_path):
    rep = evaluate(write_song(tmp_path / "vocal"))
    rows = rep["songs"][0]["vocals"]["per_section"]
    assert [r["expected"] for r in rows] == [True, False, True]
    assert [r["detected"] for r in rows] == [True, False, True]
    assert rows[0]["voiced_ratio"] > 0.8 and rows[1]["voiced_ratio"] == 0.0
    assert rep["songs"][0]["vocals"]["agreement"] == 1.0


def test_instrumental_only_request_with_vocals_is_flagged(tmp_path):
    secs = (("intro", "", 1.5), ("inst", "", 1.5))
    clean = evaluate(write_song(tmp_path / "clean", sections=secs))["songs"][0]
    assert clean["instrumental_only"] and clean["vocals"]["agreement"] == 1.0
    leak = evaluate(write_song(tmp_path / "leak", sections=secs, vocal_everywhere=True))["songs"][0]
    assert [r["detected"] for r in leak["vocals"]["per_section"]] == [True, True]
    assert leak["vocals"]["agreement"] == 0.0
    assert "vocals detected" in leak["problems"][0] and "instrumental-only request" in leak["problems"][0]


def test_vocal_presence_threshold_on_partial_voicing():
    """A section sung for 30% of its length has vocals (>= 20%); one sung for 10% does not."""
    secs = [{"label": "a", "start_s": 0.0, "end_s": 2.0}, {"label": "b", "start_s": 2.0, "end_s": 4.0}]
    req = [{"label": "a", "text": "x"}, {"label": "b", "text": "y"}]
    y = np.zeros(4 * SR, np.float32)
    y[: int(0.6 * SR)] = tone(0.6, 300.0)
    y[2 * SR : int(2.2 * SR)] = tone(0.2, 300.0)
    res = vocal_presence(y, SR, secs, req, EvalConfig())
    a, b = res["per_section"]
    assert 0.2 <= a["voiced_ratio"] <= 0.4 and a["detected"]
    assert b["voiced_ratio"] < 0.2 and not b["detected"] and not b["agrees"]


def test_out_of_range_code_is_reported_with_position(tmp_path):
    folder = write_song(tmp_path / "bad")
    codes = np.load(folder / "stage2_vocal.npy")
    codes[3, 17] = 1500
    np.save(folder / "stage2_vocal.npy", codes)
    ids = np.load(folder / "stage1_ids.npy")
    ids[2 * 40 + 1] = 32002  # <EOA> in the instrumental track at frame 40
    np.save(folder / "stage1_ids.npy", ids)
    res = evaluate(folder)["songs"][0]
    c = res["codes"]
    assert c["stage2_vocal"]["out_of_range"] == 1
    assert c["stage2_vocal"]["positions"] == [{"codebook": 3, "frame": 17, "value": 1500}]
    assert c["stage2_instrumental"]["out_of_range"] == 0
    assert c["stage1"]["positions"] == [{"track": "instrumental", "frame": 40, "value": 32002}]
    assert c["stage2_instrumental"]["row0_mismatch"] == 1  # the broken stage-1 id no longer matches codebook 0
    assert not res["ok"]["codes"]
    assert any("code" in p and "codebook 3, frame 17" in p for p in res["problems"])


def test_codes_shape_and_frames_consistency(tmp_path):
    folder = write_song(tmp_path / "s")
    song = load_song(folder)
    assert check_codes(song, EvalConfig())["problems"] == []
    song.stage2["vocal"] = song.stage2["vocal"][:4]  # [4, T]
    song.stage2["instrumental"] = song.stage2["instrumental"][:, :-3]  # 3 frames short
    song.stage1 = song.stage1[:-1]  # odd length: not a [2, T] interleave
    probs = "\n".join(check_codes(song, EvalConfig())["problems"])
    assert "stage2_vocal: shape [4, 275], expected [8, T]" in probs
    assert "stage2_instrumental: 272 frames, the sections hold 275" in probs
    assert "stage1_ids: shape [549]" in probs
    # a song.json layout overrides the tokenizer's: one codebook lower, every id is a codebook-1 id
    song2 = load_song(folder)
    song2.meta["settings"] = {"codec_layout": {"global_offset": CB0 - 1024, "codebook_size": 1024,
                                               "num_codebooks": 12}}  # fmt: skip
    assert check_codes(song2, EvalConfig())["stage1"]["out_of_range"] == 2 * 275
    # ids that are mostly no codec ids at all: a document that no tokenizer could read, said so
    song2.meta["settings"] = {"codec_layout": {"global_offset": 100, "codebook_size": 1024, "num_codebooks": 12}}
    assert any("looks like a stage-1 document" in p for p in check_codes(song2, EvalConfig())["problems"])


def test_stage1_document_as_generate_writes_it(tmp_path, tiny_tokenizer):
    """stage1_ids.npy holding the whole stage-1 document (head, prompts, codes, markers) of a tiny tokenizer."""
    folder = write_song(tmp_path / "doc", tok=tiny_tokenizer)
    res = evaluate(folder)["songs"][0]["codes"]
    assert res["problems"] == []
    assert res["stage1"]["format"] == "document" and res["stage1"]["sections"] == 3
    assert res["stage1"]["frames"] == 275 and res["layout"]["global_offset"] == tiny_tokenizer.layout.xcodec.offset(0)
    assert res["stage2_vocal"]["row0_mismatch"] == 0  # codebook 0 of stage 2 equals the document's vocal codes
    # an id of another codebook inside section 2 (song frame 175 + 3 = 178), then a lost [end_of_segment]
    ids = np.load(folder / "stage1_ids.npy").tolist()
    soa, xc = tiny_tokenizer.id("<SOA>"), tiny_tokenizer.id("<xcodec>")
    starts = [p + 2 for p in range(len(ids) - 1) if ids[p] == soa and ids[p + 1] == xc]
    bad_id = tiny_tokenizer.layout.xcodec.offset(1) + 5
    ids[starts[2] + 2 * 3 + 1] = bad_id  # instrumental id of frame 3 of section 2
    np.save(folder / "stage1_ids.npy", np.asarray(ids, np.int32))
    res = evaluate(folder)["songs"][0]["codes"]
    assert res["stage1"]["positions"] == [{"section": 2, "track": "instrumental", "frame": 178, "value": bad_id}]
    assert any("1 ids outside codebook 0" in p for p in res["problems"])
    from yue.sequences import MARKERS

    eos = tiny_tokenizer.tokenize(MARKERS["end_of_segment"])
    p = next(i for i in range(starts[0], len(ids)) if ids[i : i + len(eos)] == eos)
    np.save(folder / "stage1_ids.npy", np.asarray(ids[:p] + ids[p + len(eos):], np.int32))
    assert any("section 0: missing [end_of_segment]" in p for p in evaluate(folder)["songs"][0]["problems"])
    # the tokenizer named in song.json is gone: --tokenizer (EvalConfig.tokenizer) supplies it
    meta = json.loads((folder / "song.json").read_text())
    meta["settings"]["models"]["tokenizer"] = str(tmp_path / "gone" / "tokenizer.model")
    (folder / "song.json").write_text(json.dumps(meta))
    res = evaluate(folder, config=EvalConfig(tokenizer=str(tiny_tokenizer.path)))["songs"][0]["codes"]
    assert res["stage1"]["format"] == "document" and res["stage1"]["out_of_range"] == 1


def test_instrumental_tracks_request(tmp_path):
    """`tracks: instrumental` (no vocal files): no vocals expected even where a section has lyrics."""
    res = evaluate(write_song(tmp_path / "inst", tracks="instrumental"))["songs"][0]
    assert res["instrumental_only"] and res["files"]["vocal"] is None
    assert [r["expected"] for r in res["vocals"]["per_section"]] == [False] * 3
    assert res["ok"] == {"sections": True, "codes": True, "vocals": True} and res["codes"]["stage2_vocal"] is None


def test_song_written_by_yue_generate(tmp_path, tiny_tokenizer, tiny_codec_dir):
    """A real `yue generate` folder (tiny random LMs, 16 kHz): the contract is read, the codes are consistent."""
    generate = pytest.importorskip("yue.generate")
    import torch

    from yue.lm import build_lm, save_lm

    torch.set_num_threads(1)
    s1 = save_lm(build_lm("tiny_stage1", tiny_tokenizer.layout, seed=0), tiny_tokenizer, tmp_path / "s1")
    s2 = save_lm(build_lm("tiny_stage2", tiny_tokenizer.layout, seed=1), tiny_tokenizer, tmp_path / "s2")
    cfg = generate.load_generate_config(None, [f"models.stage1={s1}", f"models.stage2={s2}",
                                               f"models.codec={tiny_codec_dir}", "stage1.max_new_tokens=40",
                                               "stage1.min_new_tokens=8", "threads=1"])  # fmt: skip
    lyrics = "[verse]\nla la la\n\n[chorus]\nsing with me\n"
    generate.generate_song(generate.SongRequest("pop", lyrics, seed=1), tmp_path / "songs" / "a", cfg)
    res = evaluate(tmp_path / "songs")["songs"][0]
    assert res["sections"]["present"] == res["sections"]["requested"] == 2 and res["ok"]["sections"]
    assert res["codes"]["stage1"]["format"] == "document" and res["ok"]["codes"], res["codes"]["problems"]
    assert res["codes"]["stage2_vocal"]["row0_mismatch"] == 0 and res["codes"]["stage2_instrumental"]["frames"] > 0
    assert len(res["vocals"]["per_section"]) == 2  # random weights: whether vocals are heard is not asserted


# ------------------------------------------------------------------------------------------ bad input


def test_no_songs_and_bad_song_folders(tmp_path, hubert_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EvalInputError, match="no generated song folders"):
        evaluate(empty)
    with pytest.raises(EvalInputError, match="does not exist"):
        evaluate(tmp_path / "nope")
    root = tmp_path / "gen"
    write_song(root / "good")
    write_song(root / "no_mix").joinpath("mix.wav").unlink()
    write_song(root / "bad_npy").joinpath("stage2_vocal.npy").write_bytes(b"\x93NUMPY garbage")
    write_song(root / "bad_wav").joinpath("vocals.wav").write_bytes(b"RIFF....not audio")
    write_song(root / "bad_json").joinpath("song.json").write_text("{not json")
    write_song(root / ".writing.tmp")  # hidden: a song folder being written atomically, not a song yet
    unfinished = write_song(root / "unfinished")
    (unfinished / "song.json").unlink()
    out = tmp_path / "report"
    rep = evaluate(root, out_dir=out)
    assert [s["song"] for s in rep["songs"]] == ["good"]
    reasons = {Path(x["path"]).name: x["reason"] for x in rep["skipped"]}
    assert "files.mix = 'mix.wav' is missing" in reasons["no_mix"]
    assert "stage2_vocal.npy: corrupt .npy" in reasons["bad_npy"]
    assert "vocals.wav" in reasons["bad_wav"]
    assert "cannot read JSON" in reasons["bad_json"]
    assert "no song.json" in reasons["unfinished"]
    md = (out / "eval.md").read_text()
    assert "## Skipped" in md and "no_mix" in md
    assert json.loads((out / "eval.json").read_text())["summary"]["skipped"] == 5
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    # evaluating again with the report folder inside the songs folder does not treat it as a song
    rep2 = evaluate(root, out_dir=root / "eval")
    rep3 = evaluate(root, out_dir=root / "eval")
    assert rep2["summary"]["skipped"] == rep3["summary"]["skipped"] == 5


def test_all_songs_broken_is_an_error(tmp_path):
    write_song(tmp_path / "a").joinpath("song.json").write_text("[]")
    with pytest.raises(EvalInputError, match="no song could be evaluated"):
        evaluate(tmp_path)


def test_bad_embedder_folders(tmp_path, hubert_dir, songs_dir):
    with pytest.raises(EmbedderError, match="does not exist"):
        HubertEmbedder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmbedderError, match="no config.json"):
        HubertEmbedder(tmp_path / "empty")
    mert = tmp_path / "mert_remote"
    shutil.copytree(hubert_dir, mert)
    cfg = json.loads((mert / "config.json").read_text())
    cfg["model_type"] = "mert_model"  # a released MERT folder: needs remote code
    (mert / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EmbedderError, match="mert export-hf"):
        HubertEmbedder(mert)
    noweights = tmp_path / "noweights"
    noweights.mkdir()
    shutil.copy(hubert_dir / "config.json", noweights / "config.json")
    with pytest.raises(EmbedderError, match="cannot load a HubertModel"):
        HubertEmbedder(noweights)
    wrong = tmp_path / "wrong"  # weights of another (wider) HuBERT: shapes do not fit
    from transformers import HubertConfig, HubertModel

    HubertModel(HubertConfig(hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                             conv_dim=(8,) * 7, num_conv_pos_embeddings=16,
                             num_conv_pos_embedding_groups=2)).save_pretrained(wrong)  # fmt: skip
    shutil.copy(hubert_dir / "config.json", wrong / "config.json")
    with pytest.raises(EmbedderError):
        HubertEmbedder(wrong)
    with pytest.raises(EvalInputError, match="both a reference folder and an embedder"):
        evaluate(songs_dir, reference_dir=songs_dir)


def test_reference_folder_uses_mixes_only(tmp_path, songs_dir):
    kit = tmp_path / "kit" / "songs"
    for name in ("a", "b"):
        (kit / name).mkdir(parents=True)
        for stem in ("mix", "vocal", "accompaniment"):
            sf.write(kit / name / f"{stem}.wav", np.zeros(SR, np.float32), SR)
    (tmp_path / "kit" / "loose.flac").write_bytes(b"")
    (kit / ".c.tmp").mkdir()  # a song being built (atomic folder): ignored
    sf.write(kit / ".c.tmp" / "mix.wav", np.zeros(SR, np.float32), SR)
    files = find_reference_files(tmp_path / "kit")
    assert sorted(p.relative_to(tmp_path / "kit").as_posix() for p in files) == ["loose.flac", "songs/a/mix.wav",
                                                                                  "songs/b/mix.wav"]  # fmt: skip
    assert [p.name for p in find_reference_files(songs_dir)] == ["mix.wav"] * 3
    with pytest.raises(EvalInputError, match="no reference audio"):
        find_reference_files(_empty(tmp_path))


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "no_audio"
    d.mkdir(exist_ok=True)
    (d / "notes.txt").write_text("x")
    return d


def test_cli_eval_writes_reports_and_one_line_errors(tmp_path, songs_dir, hubert_dir, caplog, capsys):
    from yue.cli import main

    out = tmp_path / "rep"
    rc = main(["eval", str(songs_dir), "--reference", str(songs_dir), "--embedder", str(hubert_dir),
               "--layer", "mean", "--window-s", "2", "--out", str(out)])  # fmt: skip
    assert rc == 0
    rep = json.loads((out / "eval.json").read_text())
    assert rep["frechet"]["embedder"]["layer"] == "mean" and abs(rep["frechet"]["value"]) < 1e-6
    assert "Fréchet distance" in (out / "eval.md").read_text()
    assert "Fréchet distance" in capsys.readouterr().out
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="yue"):
        rc = main(["eval", str(songs_dir), "--reference", str(songs_dir), "--embedder", str(tmp_path / "nope")])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert rc == 2 and len(errors) == 1 and "\n" not in errors[0] and "does not exist" in errors[0]
    with caplog.at_level(logging.ERROR, logger="yue"):
        assert main(["eval", str(tmp_path / "nothing")]) == 2


# ------------------------------------------------------------------------------------------ properties

_labels = st.sampled_from(["verse", "chorus", "inst", "bridge"])
_section = st.fixed_dictionaries(
    {"label": _labels, "dur": st.floats(0.0, 40.0), "gap": st.sampled_from([0.0, 0.0, 0.5]),
     "frames_off": st.sampled_from([0, 0, 1, 7])}  # fmt: skip
)


@settings(max_examples=60, deadline=None)
@given(gen=st.lists(_section, max_size=6), req=st.lists(_labels, max_size=6))
def test_check_sections_invariants(gen, req):
    sections, start = [], 0.0
    for s in gen:
        start += s["gap"]
        sections.append({"label": s["label"], "start_s": start, "end_s": start + s["dur"],
                         "frames": int(round(s["dur"] * FPS)) + s["frames_off"]})  # fmt: skip
        start += s["dur"]
    song = GeneratedSong(Path("x"), {}, [{"label": r, "text": ""} for r in req], sections, {}, None,
                         {"vocal": None, "instrumental": None}, {})  # fmt: skip
    res = check_sections(song, EvalConfig())
    assert res["present"] + len(res["missing"]) == len(req)
    assert len(res["extra"]) == max(0, len(gen) - len(req))
    clean = all(s["gap"] == 0 and s["frames_off"] <= 1 and 1.0 <= s["dur"] <= 30.0 for s in gen)
    matching = [s["label"] for s in gen] == list(req)
    assert (not res["problems"]) == (clean and matching)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.sampled_from([(8, 5), (8, 0), (4, 5), (5,), (8, 5, 1)]),
    data=st.data(),
)
def test_check_codes_counts_every_bad_value(shape, data):
    codes = np.array(data.draw(st.lists(st.integers(-5, 1100), min_size=int(np.prod(shape)),
                                        max_size=int(np.prod(shape)))), np.int64).reshape(shape)  # fmt: skip
    t = shape[1] if len(shape) == 2 else 5
    song = GeneratedSong(Path("x"), {}, [], [{"label": "verse", "start_s": 0, "end_s": t / FPS, "frames": t}],
                         {}, None, {"vocal": codes, "instrumental": None}, {})  # fmt: skip
    res = check_codes(song, EvalConfig())
    ent = res["stage2_vocal"]
    if shape[0] == 8 and len(shape) == 2:
        bad = int(((codes < 0) | (codes >= 1024)).sum())
        assert ent["out_of_range"] == bad and (bad == 0) == (res["problems"] == [])
        for p in ent["positions"]:
            assert codes[p["codebook"], p["frame"]] == p["value"] and not 0 <= p["value"] < 1024
    else:
        assert any("expected [8, T]" in p for p in res["problems"])


_json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    request=st.none() | st.fixed_dictionaries({"sections": _json_value}) | _json_value,
    sections=_json_value,
    files=_json_value,
    n_sections=_json_value,
)
def test_load_song_rejects_malformed_json_with_a_typed_error(request, sections, files, n_sections):
    with tempfile.TemporaryDirectory() as d:
        meta = {"request": request, "sections": sections, "files": files}
        if isinstance(request, dict):
            request["n_sections"] = n_sections
        Path(d, "song.json").write_text(json.dumps(meta))
        try:
            song = load_song(d)
        except SongFolderError as e:
            assert str(e)  # typed, with a reason
        else:  # only structurally valid metadata gets through
            assert isinstance(song.requested, list) and isinstance(song.sections, list)
            assert all(isinstance(s["frames"], int) for s in song.sections)


# ------------------------------------------------------------------------------------------ real `mert export-hf`


@pytest.mark.slow
def test_folder_written_by_mert_export_hf_works(tmp_path, hubert_dir, songs_dir):
    """`mert convert` + `mert export-hf --verify` through the console script (no import of mert), then eval."""
    mert = shutil.which("mert") or str(Path(sys.executable).with_name("mert"))
    if not Path(mert).exists():
        pytest.skip("the mert console script is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for cmd in ([mert, "convert", str(hubert_dir), str(tmp_path / "ours")],
                [mert, "export-hf", str(tmp_path / "ours"), str(tmp_path / "exported"), "--verify"]):  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
    rate = json.loads((tmp_path / "exported" / "config.json").read_text())["sample_rate"]
    emb = HubertEmbedder(tmp_path / "exported", EvalConfig(window_s=2.0))
    assert emb.sample_rate == rate
    rep = evaluate(songs_dir, songs_dir, emb)
    assert abs(rep["frechet"]["value"]) < 1e-6
