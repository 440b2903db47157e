"""yue generate on tiny random LMs (build_lm + save_lm), the tiny tokenizer and the converted tiny codec fixture."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from yue.generate import GenerateInputError, SONG_KEYS, SongRequest, generate_song, load_generate_config
from yue.generate.request import AudioPrompt

LYRICS = "[verse]\nla la la the night is long\n\n[chorus]\nsing with me\n\n[outro]\nhold on\n"
FAST = ["stage1.max_new_tokens=30", "stage1.min_new_tokens=8", "threads=1"]


@pytest.fixture(scope="module")
def lm_dirs(tiny_tokenizer, tmp_path_factory):
    from yue.lm import build_lm, save_lm

    root = tmp_path_factory.mktemp("lms")
    torch.set_num_threads(1)
    s1 = save_lm(build_lm("tiny_stage1", tiny_tokenizer.layout, seed=0), tiny_tokenizer, root / "s1")
    s2 = save_lm(build_lm("tiny_stage2", tiny_tokenizer.layout, seed=1), tiny_tokenizer, root / "s2")
    return s1, s2


def _cfg(lm_dirs, codec_dir, *extra, upsampler=True):
    ov = [f"models.stage1={lm_dirs[0]}", f"models.stage2={lm_dirs[1]}", f"models.codec={codec_dir}", *FAST, *extra]
    if upsampler:
        ov.append(f"models.upsampler={codec_dir}")
    return load_generate_config(None, ov)


@pytest.fixture(scope="module")
def song_dir(lm_dirs, tiny_codec_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("song")
    generate_song(SongRequest("pop female", LYRICS, seed=3), out, _cfg(lm_dirs, tiny_codec_dir))
    return out


def test_song_folder_has_every_requested_section_and_the_contract(song_dir, tiny_tokenizer):
    import soundfile as sf

    from yue.sequences import parse_stage1

    song = json.loads((song_dir / "song.json").read_text())
    assert tuple(sorted(song)) == tuple(sorted(SONG_KEYS))
    # all 3 sections (upstream would generate 2), in order, contiguous in time
    assert [s["label"] for s in song["sections"]] == ["verse", "chorus", "outro"]
    assert [s["label"] for s in song["request"]["sections"]] == ["verse", "chorus", "outro"]
    assert song["sections"][0]["start_s"] == 0.0
    for a, b in zip(song["sections"], song["sections"][1:]):
        assert a["end_s"] == b["start_s"] and a["frames"] > 0
    ids = np.load(song_dir / "stage1_ids.npy")
    assert ids.dtype == np.int32
    parsed = parse_stage1(tiny_tokenizer, ids.tolist())
    assert parsed.ok, parsed.errors
    assert [s.section.label for s in parsed.sections] == ["verse", "chorus", "outro"]
    v, i = parsed.tracks()
    total = sum(s["frames"] for s in song["sections"])
    for name, cb0 in (("vocal", v[0]), ("instrumental", i[0])):
        codes = np.load(song_dir / f"stage2_{name}.npy")
        assert codes.dtype == np.int16 and codes.shape == (8, total)
        assert np.array_equal(codes[0], cb0)  # stage 2 keeps the stage-1 codebook 0
        assert codes.min() >= 0 and codes.max() < 1024
    assert song["sample_rate"] == 44100
    for key in ("vocal", "instrumental", "mix"):
        info = sf.info(str(song_dir / song["files"][key]))
        assert info.samplerate == 44100 and info.frames > 0
    assert set(song["timings"]) == {"stage1_s", "stage2_s", "decode_s", "total_s"}
    assert song["settings"]["stage1"]["top_p"] == 0.93 and song["settings"]["stage1"]["guidance_first"] == 1.5


def test_sixteen_khz_without_upsampler_and_first_n_sections(lm_dirs, tiny_codec_dir, tmp_path):
    import soundfile as sf

    song = generate_song(SongRequest("pop", LYRICS, n_sections=2, seed=1), tmp_path,
                         _cfg(lm_dirs, tiny_codec_dir, upsampler=False))  # fmt: skip
    assert [s["label"] for s in song["sections"]] == ["verse", "chorus"]
    assert song["sample_rate"] == 16000 and sf.info(str(tmp_path / "mix.wav")).samplerate == 16000


@pytest.mark.parametrize("tracks", ["instrumental", "vocal"])
def test_single_track_requests_give_the_requested_layout(tracks, lm_dirs, tiny_codec_dir, tmp_path, tiny_tokenizer):
    from yue.generate import Models

    cfg = _cfg(lm_dirs, tiny_codec_dir, upsampler=False)
    song = generate_song(SongRequest("pop", "[intro]\n\n[verse]\nla la\n", tracks=tracks, seed=5), tmp_path, cfg)
    other = "vocal" if tracks == "instrumental" else "instrumental"
    assert song["files"][other] is None and song["files"][f"stage2_{other}"] is None
    assert not (tmp_path / f"stage2_{other}.npy").exists()
    assert not (tmp_path / ("vocals.wav" if other == "vocal" else "instrumental.wav")).exists()
    assert (tmp_path / song["files"][tracks]).is_file() and (tmp_path / "mix.wav").is_file()
    # stage 1: every position of the silenced track holds the codec's silence code, the other track varies
    state = json.loads((tmp_path / "state.json").read_text())
    silence = Models(cfg).silence_code()
    xc = tiny_tokenizer.layout.xcodec
    forced_parity = 0 if tracks == "instrumental" else 1
    for sec in state["stage1_sections"]:
        codes = np.asarray(sec[:-1]) - xc.offset(0)
        assert len(codes) % 2 == 0
        assert (codes[forced_parity::2] == silence).all()
    kept = np.load(tmp_path / f"stage2_{tracks}.npy")
    assert kept.shape[0] == 8 and not (kept[0] == silence).all()


def test_resume_after_interruption_gives_the_same_files(song_dir, lm_dirs, tiny_codec_dir, tmp_path):
    class Killed(Exception):
        pass

    def die(k, sections):
        if k == 1:
            raise Killed  # as if the job died right after section 2 was saved

    cfg = _cfg(lm_dirs, tiny_codec_dir)
    req = SongRequest("pop female", LYRICS, seed=3)
    with pytest.raises(Killed):
        generate_song(req, tmp_path, cfg, on_section=die)
    state = json.loads((tmp_path / "state.json").read_text())
    assert len(state["stage1_sections"]) == 2 and not state["stage1_done"] and not (tmp_path / "song.json").exists()
    song = generate_song(req, tmp_path, cfg)
    ref = json.loads((song_dir / "song.json").read_text())
    for f in ("stage1_ids.npy", "stage2_vocal.npy", "stage2_instrumental.npy", "vocals.wav", "instrumental.wav",
              "mix.wav"):  # fmt: skip
        assert (tmp_path / f).read_bytes() == (song_dir / f).read_bytes(), f
    for k in ("request", "sections", "files", "sample_rate", "settings"):
        assert song[k] == ref[k]
    # finished folder: a rerun returns at once; another request in the same folder is refused
    assert generate_song(req, tmp_path, cfg)["sections"] == song["sections"]
    with pytest.raises(GenerateInputError, match="another request"):
        generate_song(SongRequest("pop female", LYRICS, seed=4), tmp_path, cfg)


def test_folder_of_another_request_taken_over_only_while_nothing_was_generated(lm_dirs, tiny_codec_dir, tmp_path):
    """A first run that stopped before any section (e.g. on a wrong model path) must not block the corrected rerun;
    a folder holding generated sections of another request is still refused, and a corrupt state.json is named."""
    cfg = _cfg(lm_dirs, tiny_codec_dir)
    req = SongRequest("pop female", LYRICS, seed=3)
    stale = {"key": {"request": "another", "models": {"stage1": "/no/such/model"}}, "stage1_sections": [],
             "icl": None, "stage1_done": False, "stage2_done": False, "timings": {}}  # fmt: skip
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "state.json").write_text(json.dumps(stale))
    song = generate_song(req, tmp_path / "a", cfg)
    assert (tmp_path / "a" / "mix.wav").is_file() and song["request"]["genre"] == "pop female"
    assert json.loads((tmp_path / "a" / "state.json").read_text())["stage1_done"]

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "state.json").write_text(json.dumps({**stale, "stage1_sections": [[1, 2, 3]]}))
    with pytest.raises(GenerateInputError, match="another request"):
        generate_song(req, tmp_path / "b", cfg)
    (tmp_path / "b" / "state.json").write_text("{cut off")
    with pytest.raises(GenerateInputError, match=r"state\.json: unreadable resume state"):
        generate_song(req, tmp_path / "b", cfg)
    assert not (tmp_path / "b" / "song.json").exists()


def test_batch_skips_bad_rows_and_finished_songs(lm_dirs, tiny_codec_dir, tmp_path):
    from yue.cli import main

    reqs = tmp_path / "req.jsonl"
    reqs.write_text("\n".join([
        json.dumps({"id": "a", "genre": "pop", "lyrics": "[verse]\nla la\n", "seed": 1}),
        json.dumps({"id": "bad", "genre": "pop", "lyrics": "no labels here"}),
        "{not json",
        json.dumps({"id": "b", "genre": "rock", "lyrics": "[chorus]\nsing\n", "seed": 2}),
    ]) + "\n")  # fmt: skip
    args = ["generate", "--batch", str(reqs), "--out", str(tmp_path / "out"), "--stage1", str(lm_dirs[0]),
            "--stage2", str(lm_dirs[1]), "--codec", str(tiny_codec_dir), *FAST]  # fmt: skip
    assert main(args + ["--shard", "1/2"]) == 1  # rows 2 and 4 of 4 non-blank: "bad" fails, "b" is generated
    assert (tmp_path / "out" / "b" / "song.json").is_file() and not (tmp_path / "out" / "a").exists()
    assert main(args + ["--shard", "0/2"]) == 1  # "a" generated, the broken JSON line reported
    assert (tmp_path / "out" / "a" / "song.json").is_file()
    mtime = (tmp_path / "out" / "a" / "song.json").stat().st_mtime_ns
    assert main(args + ["--shard", "0/2"]) == 1
    assert (tmp_path / "out" / "a" / "song.json").stat().st_mtime_ns == mtime  # finished: skipped


# ---- bad input: a clear typed error before any model is loaded -----------------------------------------------
@pytest.fixture
def no_models(monkeypatch):
    import yue.lm.model

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(yue.lm.model, "load_lm", boom)
    monkeypatch.setattr("yue.codec.XCodec.from_pretrained", boom)


@pytest.mark.parametrize("lyrics, match", [
    ("", "empty"), ("   \n ", "empty"), ("just words, no labels", "no section labels"),
    ("[]\nla", "malformed"), ("[verse]\n\n[chorus]\n", "every section is empty"),
])  # fmt: skip
def test_bad_lyrics_fail_before_loading(lyrics, match, lm_dirs, tiny_codec_dir, tmp_path, no_models):
    with pytest.raises(GenerateInputError, match=match):
        generate_song(SongRequest("pop", lyrics), tmp_path, _cfg(lm_dirs, tiny_codec_dir))


def test_unknown_tags_warn_or_error(lm_dirs, tiny_codec_dir, tmp_path, no_models, caplog):
    from yue.generate import prepare_request
    from yue.generate.request import find_released_tags

    if find_released_tags() is None:
        pytest.skip("top_200_tags.json not found")
    p = prepare_request(SongRequest("Pop female zzzunknowntag", LYRICS), _cfg(lm_dirs, tiny_codec_dir))
    assert p.unknown_tags == ["zzzunknowntag"] and "zzzunknowntag" in caplog.text
    assert prepare_request(SongRequest("pop rock female bright vocal", LYRICS), _cfg(lm_dirs, tiny_codec_dir)).unknown_tags == []
    with pytest.raises(GenerateInputError, match="zzzunknowntag"):
        generate_song(SongRequest("pop zzzunknowntag", LYRICS), tmp_path,
                      _cfg(lm_dirs, tiny_codec_dir, "unknown_tags=error"))  # fmt: skip


def test_bad_prompt_windows_fail_before_loading(lm_dirs, tiny_codec_dir, tmp_path, no_models):
    import soundfile as sf

    wav = tmp_path / "ref.wav"
    sf.write(str(wav), np.random.RandomState(0).randn(16000).astype(np.float32) * 0.1, 16000)  # 1 s
    cfg = _cfg(lm_dirs, tiny_codec_dir)
    cases = [(AudioPrompt([str(wav)], 0.5, 0.51), "shorter than one codec frame"),
             (AudioPrompt([str(wav)], 0.2, 0.1), "shorter than one codec frame"),
             (AudioPrompt([str(wav)], 0.0, 5.0), "past the end"),
             (AudioPrompt([str(wav), str(tmp_path / "missing.wav")], 0.0, 0.5), "missing.wav"),
             (AudioPrompt([str(wav)], -1.0, 0.5), "negative")]  # fmt: skip
    for prompt, match in cases:
        with pytest.raises(GenerateInputError, match=match):
            generate_song(SongRequest("pop", LYRICS, audio_prompt=prompt), tmp_path / "o", cfg)


def test_lyrics_too_long_for_the_context(lm_dirs, tiny_codec_dir, tmp_path, no_models):
    long = "[verse]\n" + "la la la the night is long and the road goes on\n" * 60
    with pytest.raises(GenerateInputError, match="too long for the stage-1 context"):
        generate_song(SongRequest("pop", long), tmp_path, _cfg(lm_dirs, tiny_codec_dir, "stage1.max_context=600"))


def test_cli_reports_bad_input_with_exit_code_2(lm_dirs, tiny_codec_dir, tmp_path, capsys, no_models):
    from yue.cli import main

    lyr = tmp_path / "l.txt"
    lyr.write_text("no labels at all")
    rc = main(["generate", "--genre", "pop", "--lyrics", str(lyr), "--out", str(tmp_path / "o"), "--stage1",
               str(lm_dirs[0]), "--stage2", str(lm_dirs[1]), "--codec", str(tiny_codec_dir)])  # fmt: skip
    assert rc == 2


@pytest.mark.parametrize("mode", ["single", "dual"])
def test_icl_prompt_is_encoded_cropped_and_placed_after_the_head(mode, lm_dirs, tiny_codec_dir, tmp_path,
                                                                 tiny_tokenizer):  # fmt: skip
    import soundfile as sf

    from yue.codec import XCodec
    from yue.sequences import parse_stage1

    rng = np.random.RandomState(0)
    paths = []
    for name in ("vocal", "inst")[: 2 if mode == "dual" else 1]:
        p = tmp_path / f"{name}.wav"
        sf.write(str(p), (rng.randn(2, 32000) * 0.1).astype(np.float32).T, 32000)  # 1 s stereo at 32 kHz
        paths.append(str(p))
    prompt = AudioPrompt(paths, 0.2, 0.7)  # 25 frames
    song = generate_song(SongRequest("pop", "[verse]\nla la\n", audio_prompt=prompt, seed=2), tmp_path / "o",
                         _cfg(lm_dirs, tiny_codec_dir, upsampler=False))  # fmt: skip
    assert song["request"]["audio_prompt"] == {"paths": paths, "start": 0.2, "end": 0.7, "mode": mode}
    parsed = parse_stage1(tiny_tokenizer, np.load(tmp_path / "o" / "stage1_ids.npy").tolist(), reference_mode=mode)
    assert parsed.ok, parsed.errors
    assert parsed.reference is not None and parsed.reference.vocal.shape[0] == 25
    assert len(parsed.sections) == 1
    # the block holds the codec's own codes of the window (mono, 16 kHz, 0.5 kbps), cropped after encoding
    from musiccore.audio import load_audio
    from yue.codec import prepare_waveform

    codec = XCodec.from_pretrained(tiny_codec_dir)
    wav, sr = load_audio(paths[0])
    full = codec.encode(torch.as_tensor(prepare_waveform(wav, sr))[None, None], target_bw=0.5)[0, 0].numpy()
    assert np.array_equal(parsed.reference.vocal, full[10:35])


def test_any_lyrics_give_a_typed_error_or_every_section(lm_dirs, tiny_codec_dir, no_models, tiny_tokenizer):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from yue.generate import prepare_request

    cfg = _cfg(lm_dirs, tiny_codec_dir)
    label = st.sampled_from(["[verse]", "[chorus]", "[Bridge]", "[intro]", "[spoken]", "[pre-chorus]", "[]", ""])
    line = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="[]"), max_size=30)
    block = st.tuples(label, st.lists(line, max_size=3)).map(lambda t: t[0] + "\n" + "\n".join(t[1]))

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(blocks=st.lists(block, max_size=5), n=st.one_of(st.none(), st.integers(-1, 6)))
    def check(blocks, n):
        lyrics = "\n\n".join(blocks)
        try:
            p = prepare_request(SongRequest("pop", lyrics, n_sections=n), cfg, tok=tiny_tokenizer)
        except GenerateInputError as e:
            assert str(e)
            return
        assert 1 <= len(p.generate) == (len(p.sections) if n is None else n) == len(p.plan.prompts)
        assert p.plan.head and all(pr[-1] == tiny_tokenizer.id("<xcodec>") for pr in p.plan.prompts)

    check()


@pytest.mark.slow
def test_sigkilled_cli_run_resumes_to_the_same_files(song_dir, lm_dirs, tiny_codec_dir, tmp_path):
    """A real ``yue generate`` process killed with SIGKILL mid stage 1, then relaunched with the same command."""
    import os
    import signal
    import subprocess
    import sys
    import time

    lyr = tmp_path / "lyrics.txt"
    lyr.write_text(LYRICS)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "yue.cli", "generate", "--genre", "pop female", "--lyrics", str(lyr), "--seed", "3",
           "--out", str(out), "--stage1", str(lm_dirs[0]), "--stage2", str(lm_dirs[1]), "--codec", str(tiny_codec_dir),
           "--upsampler", str(tiny_codec_dir), *FAST]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        st = out / "state.json"
        if st.is_file() and len(json.loads(st.read_text()).get("stage1_sections", [])) >= 1:
            break
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert killed, "the run finished before it could be killed"
    assert not (out / "song.json").exists()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for f in ("stage1_ids.npy", "stage2_vocal.npy", "stage2_instrumental.npy", "vocals.wav", "instrumental.wav",
              "mix.wav"):  # fmt: skip
        assert (out / f).read_bytes() == (song_dir / f).read_bytes(), f
