"""Real data-kit songs (the shared `datakit` fixture): codec round trip and stage-1 / stage-2 sequences."""

import dataclasses

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def kit_song(datakit):
    from yue.songs import load_songs

    if not (datakit / "songs" / "manifest.jsonl").exists():  # the kit was built without the songs step (no Festival)
        pytest.skip("data kit has no songs (built without Festival)")
    songs = load_songs(root=datakit, limit=1, allow_synth=False)  # any other failure is a bug: it fails the test
    s = songs[0]
    n = 12 * 16000  # a 12 s excerpt keeps the test fast; its sections are cut to the excerpt (prepare rejects
    # timings outside the audio)
    sections = [dict(sec, end=min(float(sec["end"]), 12.0)) for sec in s.sections if float(sec["start"]) < 11.0]
    return dataclasses.replace(s, vocal=s.vocal[:n], accompaniment=s.accompaniment[:n], mix=s.mix[:n],
                               sections=sections)


def test_kit_song_codec_roundtrip(kit_song, tiny_codec):
    from yue.codec.train import evaluate_codec

    x = kit_song.mix[: 3 * 16000]
    r = evaluate_codec(tiny_codec, x, 6.0)
    assert r["codes_shape"] == [12, 150]  # 48000 samples = 150 x 320
    assert r["recon"].shape == x.shape and np.isfinite(r["recon"]).all()
    codes = tiny_codec.encode(torch.from_numpy(x), 0.5)
    assert codes.shape == (1, 1, 150)


def test_kit_song_sequences(kit_song, tiny_codec, tiny_tokenizer):
    from yue.prepare import prepare_song
    from yue.sequences import parse_stage1, parse_stage2

    res = prepare_song(kit_song, tiny_codec, tiny_tokenizer)
    p = parse_stage1(tiny_tokenizer, res["stage1"])
    assert p.ok, p.errors
    assert p.tags == kit_song.tags and p.eod
    assert [s.section.label for s in p.sections] == [s["label"] for s in res["segments"]]
    v, _ = p.tracks()
    fps = 50
    a = int(round(kit_song.sections[0]["start"] * fps))
    assert a == res["segments"][0]["frame_start"]
    assert np.array_equal(v[0, :10], res["codes"]["vocal"][0, a : a + 10])
    ids, kept = res["stage2"]["vocal"]
    if kept:
        p2 = parse_stage2(tiny_tokenizer.layout, ids)
        assert p2.ok and np.array_equal(p2.chunks[0].codes, res["codes"]["vocal"][:8, kept[0] : kept[0] + 300])
