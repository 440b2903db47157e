"""`yue prepare`: the manifest contract the LM loader reads, bad songs skipped with reasons, report.json, resume,
lazy loading, tokenizer in the output, and the refusal of a silent random codec."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from yue.cli import main
from yue.prepare import PrepareError, check_sections, prepare_songs
from yue.songs import SongRef, song_refs, synth_song

SR = 16000
SECONDS = 4.0


def _write_song(root: Path, sid: str, split: str, seed: int, **edit) -> dict:
    """A kit row + its three stems (a 4 s synthesized song); ``edit`` breaks it on purpose."""
    s = synth_song(seed=seed, seconds=SECONDS)
    folder = root / "songs" / sid
    folder.mkdir(parents=True)
    stems = {"vocal": s.vocal, "accompaniment": s.accompaniment, "mix": s.mix}
    if "acc_len" in edit:
        stems["accompaniment"] = stems["accompaniment"][: edit["acc_len"]]
    for k, w in stems.items():
        sf.write(folder / f"{k}.wav", w, SR, subtype="PCM_16")
    if edit.get("corrupt"):
        (folder / "mix.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt not really audio")
    if edit.get("missing"):
        (folder / "vocal.wav").unlink()
    row = {"id": sid, "split": split, "tags": s.tags.split(), "lyrics": s.lyrics, "sections": s.sections,
           "vocal": f"songs/{sid}/vocal.wav", "accompaniment": f"songs/{sid}/accompaniment.wav",
           "mix": f"songs/{sid}/mix.wav"}  # fmt: skip
    if "sections" in edit:
        row["sections"] = edit["sections"]
    return row


@pytest.fixture(scope="module")
def bad_kit(tmp_path_factory):
    """A data kit with two good songs and one song per kind of bad input of issue 15."""
    root = tmp_path_factory.mktemp("kit")
    rows = [
        _write_song(root, "good-a", "train", 0),
        _write_song(root, "missing-stem", "train", 1, missing=True),
        _write_song(root, "unequal-stems", "train", 2, acc_len=int((SECONDS - 1.0) * SR)),
        _write_song(root, "timing-outside", "train", 3,
                    sections=[{"label": "verse", "start": 0.0, "end": 2.0, "lyrics": "la la"},
                              {"label": "chorus", "start": 2.0, "end": 9.5, "lyrics": "sun rain"}]),
        _write_song(root, "no-label", "valid", 4, sections=[{"label": "", "start": 0.0, "end": 3.0, "lyrics": "x"}]),
        _write_song(root, "no-sections", "valid", 5, sections=[]),
        _write_song(root, "corrupt-audio", "test", 6, corrupt=True),
        _write_song(root, "good-b", "test", 7),
    ]  # fmt: skip
    (root / "songs" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def prepared(bad_kit, tiny_codec_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep")
    rc = main(["prepare", "--root", str(bad_kit), "-o", str(out), "--codec", str(tiny_codec_dir),
               "--tokenizer", "tiny"])  # fmt: skip
    return rc, out


EXPECTED_REASONS = {
    "missing-stem": "missing stem",
    "unequal-stems": "stems of different lengths",
    "timing-outside": "outside the audio",
    "no-label": "no label",
    "no-sections": "no labelled section",
    "corrupt-audio": "corrupt audio",
}


def test_bad_songs_are_skipped_with_reasons_and_the_rest_is_built(prepared):
    rc, out = prepared
    assert rc == 1  # some songs failed (reported), the run finished
    rep = json.loads((out / "report.json").read_text())
    assert rep["counts"] == {"songs": 8, "prepared": 2, "already_there": 0, "failed": 6, "in_manifest": 2}
    reasons = {f["id"]: f["reason"] for f in rep["failures"]}
    assert set(reasons) == set(EXPECTED_REASONS)
    for sid, words in EXPECTED_REASONS.items():
        assert words in reasons[sid] and sid in reasons[sid], (sid, reasons[sid])
    assert sorted(rep["prepared"]) == ["good-a", "good-b"]
    assert [json.loads(x)["id"] for x in (out / "failures.jsonl").read_text().splitlines()] == [
        f["id"] for f in rep["failures"]
    ]
    assert not list(out.rglob(".*.tmp*"))  # atomic writes leave no temporary files


def test_report_names_codec_tokenizer_and_counts_tokens_per_split(prepared, tiny_codec_dir):
    _, out = prepared
    rep = json.loads((out / "report.json").read_text())
    assert rep["codec"]["path"] == str(Path(tiny_codec_dir).resolve()) and rep["codec"]["random"] is False
    assert rep["tokenizer"]["kind"] == "tiny"
    assert rep["tokenizer"]["path"] == str((out / "tokenizer" / "tokenizer.model").resolve())
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert set(rep["tokens"]) == {"train", "test"}
    for split, c in rep["tokens"].items():
        mine = [r for r in rows if r["split"] == split]
        assert c["songs"] == len(mine) == 1
        assert c["stage1_tokens"] == sum(r["stage1_len"] for r in mine) == sum(
            np.load(out / "stage1" / f"{r['id']}.npy").size for r in mine)
        assert c["frames"] == sum(r["frames"] for r in mine)


def test_manifest_contract(prepared):
    """What the LM data loader reads: split, tags, segments with frame ranges in the order of the stage-1 document,
    codes int16 [K, T] with equal T, the tokenizer in the output folder."""
    from yue.sequences import parse_stage1
    from yue.tokenizer import YuETokenizer

    _, out = prepared
    tok = YuETokenizer(out / "tokenizer" / "tokenizer.model")  # layout.json beside it
    assert (out / "tokenizer" / "layout.json").is_file()
    rows = {json.loads(x)["id"]: json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()}
    assert rows["good-a"]["split"] == "train" and rows["good-b"]["split"] == "test"
    for sid, row in rows.items():
        assert isinstance(row["tags"], str) and row["tags"] == synth_song(0, SECONDS).tags
        codes = np.load(out / "codes" / f"{sid}.npz")
        assert sorted(codes.files) == ["accompaniment", "mix", "vocal"]
        t = row["frames"]
        assert t == (int(SECONDS * SR) + 240) // 320
        for k in codes.files:
            assert codes[k].dtype == np.int16 and codes[k].shape == (12, t)
        segs = row["segments"]
        assert [s["label"] for s in segs] == ["verse", "chorus"] == row["sections"]
        for s in segs:
            assert set(s) == {"label", "text", "frame_start", "frame_end"}
            assert 0 <= s["frame_start"] and s["frame_end"] - s["frame_start"] >= 50 and s["frame_end"] <= t
        p = parse_stage1(tok, np.load(out / "stage1" / f"{sid}.npy"))
        assert p.ok and p.eod
        assert [(ps.section.label, ps.section.text) for ps in p.sections] == [(s["label"], s["text"]) for s in segs]
        for ps, s in zip(p.sections, segs):  # the frame range points at the codes the document holds
            assert np.array_equal(ps.vocal, codes["vocal"][0, s["frame_start"] : s["frame_end"]])
            assert np.array_equal(ps.inst, codes["accompaniment"][0, s["frame_start"] : s["frame_end"]])


def test_second_run_resumes_and_reuses_the_tokenizer(prepared, bad_kit, tiny_codec_dir):
    _, out = prepared
    before = (out / "manifest.jsonl").read_bytes()
    tok_before = (out / "tokenizer" / "tokenizer.model").read_bytes()
    rc = main(["prepare", "--root", str(bad_kit), "-o", str(out), "--codec", str(tiny_codec_dir),
               "--tokenizer", "tiny"])  # fmt: skip
    assert rc == 1
    rep = json.loads((out / "report.json").read_text())
    assert rep["counts"]["already_there"] == 2 and rep["counts"]["prepared"] == 0 and rep["counts"]["failed"] == 6
    assert (out / "manifest.jsonl").read_bytes() == before
    assert (out / "tokenizer" / "tokenizer.model").read_bytes() == tok_before


def test_resume_with_another_codec_is_refused(prepared, bad_kit, caplog):
    _, out = prepared
    before = (out / "manifest.jsonl").read_bytes()
    rc = main(["prepare", "--root", str(bad_kit), "-o", str(out), "--random-codec", "--tokenizer", "tiny"])
    assert rc == 2
    assert any("another output folder" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert (out / "manifest.jsonl").read_bytes() == before


def test_songs_are_loaded_one_at_a_time(bad_kit, tiny_tokenizer, tmp_path, monkeypatch):
    """prepare reads a song's audio only when its turn comes (300 songs never sit in memory together)."""
    events = []
    real_load = SongRef.load
    monkeypatch.setattr(SongRef, "load", lambda self, trim=False: (events.append(("load", self.id)),
                                                                   real_load(self, trim))[1])  # fmt: skip

    def fake_prepare(song, codec, tok, chunk_s=30.0):
        events.append(("prepare", song.id))
        raise PrepareError(f"{song.id}: stop here")

    monkeypatch.setattr("yue.prepare.prepare_song", fake_prepare)
    refs = [r for r in song_refs(root=bad_kit) if r.id.startswith("good")]
    assert not any(hasattr(r, "vocal") for r in refs)  # rows only
    rep = prepare_songs(refs, codec=None, tok=tiny_tokenizer, out_dir=tmp_path, codec_info={}, tokenizer_info={})
    assert events == [("load", "good-a"), ("prepare", "good-a"), ("load", "good-b"), ("prepare", "good-b")]
    assert rep["counts"]["failed"] == 2


@pytest.mark.parametrize("cmd", [["prepare", "-o", "OUT"], ["codec", "encode", "IN", "-o", "OUT"],
                                 ["codec", "decode", "IN", "-o", "OUT"]])  # fmt: skip
def test_random_codec_needs_an_explicit_flag(cmd, tmp_path, caplog):
    argv = [str(tmp_path / a) if a in ("OUT", "IN") else a for a in cmd]
    (tmp_path / "IN").mkdir()
    assert main(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "--random-codec" in errors[0] and "\n" not in errors[0]
    assert not (tmp_path / "OUT").exists() or not any((tmp_path / "OUT").iterdir())


def test_random_codec_flag_runs(bad_kit, tmp_path):
    out = tmp_path / "prep"
    rc = main(["prepare", "--root", str(bad_kit), "-o", str(out), "--random-codec", "--tokenizer", "tiny",
               "--limit", "1"])  # fmt: skip
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["codec"]["random"] is True and rep["codec"]["preset"] == "tiny" and rep["counts"]["prepared"] == 1


def test_prepare_finds_the_kit_through_data_dir(bad_kit, tmp_path, monkeypatch, tiny_codec_dir):
    """No --root: the kit comes from musiccore.runs.data_dir() (MUSIC_DATA_DIR here; the checkout's data/kit in a
    plain shell, see shared/tests/test_data_dir.py)."""
    monkeypatch.setenv("MUSIC_DATA_DIR", str(bad_kit))
    out = tmp_path / "prep"
    rc = main(["prepare", "-o", str(out), "--codec", str(tiny_codec_dir), "--tokenizer", "tiny", "--split", "valid"])
    assert rc == 1  # the valid split of bad_kit holds only bad songs
    rep = json.loads((out / "report.json").read_text())
    assert {f["id"] for f in rep["failures"]} == {"no-label", "no-sections"}


# ---------------------------------------------------------------------------------------------- section timings
LABELS = ["verse", "chorus", "bridge", "outro", "", "solo-ish"]
FPS = 50


def _oracle(sections, duration, frames, tol):
    """The documented rule, written independently: error, or the kept (label, frame_start, frame_end)."""
    from yue.lyrics import KNOWN_LABELS

    if not sections:
        return "error"
    kept = []
    for s in sections:
        if not s["label"] or s["label"].lower() not in KNOWN_LABELS:
            return "error"
        a, b = s["start"], s["end"]
        if not (math.isfinite(a) and math.isfinite(b)) or a < 0 or b <= a or b > duration + tol:
            return "error"
        fa, fb = int(round(a * FPS)), min(frames, int(round(b * FPS)))
        if fb - fa >= FPS:
            kept.append((s["label"], fa, fb))
    return kept or "error"


times = st.one_of(st.floats(-2.0, 14.0), st.just(float("nan")), st.just(float("inf")))
any_sections = st.lists(st.fixed_dictionaries({"label": st.sampled_from(LABELS), "start": times, "end": times,
                                               "lyrics": st.text(max_size=12)}), max_size=5)  # fmt: skip


@st.composite
def near_audio(draw):
    """Mostly plausible songs: increasing boundaries around the audio length, known labels (some 1 s or shorter,
    some just past the end)."""
    duration = draw(st.floats(0.5, 12.0))
    cuts = sorted(draw(st.lists(st.floats(0.0, duration + 0.3), min_size=2, max_size=6)))
    labels = draw(st.lists(st.sampled_from(LABELS[:4]), min_size=len(cuts) - 1, max_size=len(cuts) - 1))
    secs = [{"label": lab, "start": a, "end": b, "lyrics": "la"} for lab, a, b in zip(labels, cuts, cuts[1:])]
    return duration, secs


@settings(max_examples=200, deadline=None)
@given(case=st.one_of(st.tuples(st.floats(0.5, 12.0), any_sections), near_audio()))
def test_section_timings_against_audio_length(case):
    """Random section timings against audio lengths: a PrepareError naming the song, or valid segments, exactly
    as the documented rule says."""
    duration, sections = case
    frames = (int(duration * SR) + 240) // 320
    want = _oracle(sections, duration, frames, 0.1)
    try:
        got = check_sections("song-x", sections, duration, frames, FPS, 0.1)
    except PrepareError as e:
        assert want == "error", (sections, str(e))
        assert str(e).startswith("song-x")  # the reason names the song
        return
    assert want != "error"
    assert [(s["label"], s["frame_start"], s["frame_end"]) for s in got] == want
    for s in got:
        assert 0 <= s["frame_start"] < s["frame_end"] <= frames and s["frame_end"] - s["frame_start"] >= FPS
