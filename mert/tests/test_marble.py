"""MARBLE dataset adapters on tiny generated folders in each published layout (specs/mert.md §6.3), bad input reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from mert import marble
from mert.marble import DatasetError, load_task_data

SR = 16000


def wav(path, seconds=0.3, seed=0, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)
    sf.write(path, x, SR, format=fmt) if fmt else sf.write(path, x, SR)
    return path


def test_gtzan_layout_reports_missing_and_unknown(tmp_path):
    lists = {"train": ["blues/blues.00000.wav", "rock/rock.00001.wav", "polka/polka.00000.wav",
                       "jazz/jazz.00054.wav"],
             "valid": ["pop/pop.00002.wav"], "test": ["metal/metal.00003.wav"]}
    for split, lines in lists.items():
        (tmp_path / f"{split}_filtered.txt").write_text("\n".join(lines) + "\n")
        for n, line in enumerate(lines):
            if "jazz.00054" not in line:  # corrupt/deleted in the Kaggle copy: missing here
                wav(tmp_path / "genres" / line, seed=n)
    d = load_task_data("gtzan", tmp_path)
    assert d.counts() == {"train": 2, "valid": 1, "test": 1}
    assert [e.target for e in d.split("train")] == ["blues", "rock"]
    assert any("jazz/jazz.00054.wav" in p and "missing audio" in p for p in d.problems)
    assert any("polka" in p and "unknown label" in p for p in d.problems)
    assert d.classes[0] == "blues" and len(d.classes) == 10


def test_empty_split_reported_and_nothing_left_is_an_error(tmp_path):
    (tmp_path / "train_filtered.txt").write_text("blues/blues.00000.wav\n")
    (tmp_path / "valid_filtered.txt").write_text("rock/rock.00000.wav\n")
    (tmp_path / "test_filtered.txt").write_text("")
    wav(tmp_path / "genres/blues/blues.00000.wav")
    wav(tmp_path / "genres/rock/rock.00000.wav")
    d = load_task_data("gtzan", tmp_path)
    assert "split 'test' is empty" in d.problems
    (tmp_path / "genres/rock/rock.00000.wav").unlink()
    with pytest.raises(DatasetError, match="nothing left to probe in the valid split.*rock.00000.wav"):
        load_task_data("gtzan", tmp_path)
    with pytest.raises(DatasetError, match="dataset folder not found"):
        load_task_data("gtzan", tmp_path / "nope")


def test_giantsteps_clips_meta(tmp_path):
    base = tmp_path / "giantsteps_clips"
    meta = {}
    for i, (split, key) in enumerate([("train", "D major"), ("train", "F# minor"), ("valid", "Bb major"),
                                      ("test", "Eb minor"), ("test", "H dorian")]):
        stem = f"{1000 + i // 2:07d}-{i % 2}"
        meta[stem] = {"split": split, "y": key, "clip": {"audio_uid": f"{1000 + i // 2}", "clip_idx": i % 2}}
        wav(base / "wav" / f"{stem}.wav", seed=i)
    (base / "meta.json").write_text(json.dumps(meta))
    d = load_task_data("giantsteps", tmp_path)
    assert d.counts() == {"train": 2, "valid": 1, "test": 1}
    assert [e.target for e in d.split("train")] == ["D major", "Gb minor"]  # sharps spelled as flats
    assert d.split("train")[0].group == d.split("train")[1].group == "1000"  # clips of one track share a group
    assert any("H dorian" in p for p in d.problems)
    assert d.classes.index("Gb minor") == 12 + 6  # 12 * minor + pitch class (MIREX score indexing)


def test_mtt_top_tags_and_split_lists(tmp_path):
    tags = ["guitar", "rock", "piano", "quiet"]
    rows = [["0", "1", "1", "0", "0", "0/a-b-0-29.mp3"], ["1", "1", "0", "0", "0", "c/c-d-0-29.mp3"],
            ["2", "0", "0", "1", "0", "d/e-f-0-29.mp3"], ["3", "1", "1", "1", "0", "1/g-h-0-29.mp3"]]
    (tmp_path / "annotations_final.csv").write_text(
        "\t".join(["clip_id", *tags, "mp3_path"]) + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    (tmp_path / "train.tsv").write_text("0\t0/a-b-0-29.mp3\n3\t1/g-h-0-29.mp3\n99\tx/y.mp3\n")
    (tmp_path / "valid.tsv").write_text("1\tc/c-d-0-29.mp3\n")
    (tmp_path / "test.tsv").write_text("2\td/e-f-0-29.mp3\n")
    for n, r in enumerate(rows):
        wav(tmp_path / "mp3" / r[-1], seed=n, fmt="MP3")
    d = marble.mtt(tmp_path, top=3)
    assert d.classes == ["guitar", "rock", "piano"]  # by frequency; "quiet" (never set) is not in the top 3
    assert [e.target for e in d.split("train")] == [["guitar", "rock"], ["guitar", "rock", "piano"]]
    assert any("row index '99'" in p for p in d.problems)


def test_emo_meta_zscored_on_development_songs(tmp_path):
    base = tmp_path / "emomusic"
    meta = {}
    ys = {"0002": ("train", [3.0, 4.0]), "0003": ("train", [5.0, 6.0]), "0004": ("valid", [4.0, 5.0]),
          "0005": ("test", [8.0, 2.0]), "0006": ("train", [1.0])}
    for n, (sid, (split, y)) in enumerate(ys.items()):
        meta[sid] = {"split": split, "y": y}
        wav(base / "wav" / f"{sid}.wav", seed=n)
    (base / "meta.json").write_text(json.dumps(meta))
    d = load_task_data("emo", tmp_path)
    dev = np.array([e.target for e in d.examples if e.split != "test"])
    assert np.allclose(dev.mean(axis=0), 0) and np.allclose(dev.std(axis=0), 1)
    assert any("0006" in p for p in d.problems)


def test_nsynth_family_and_pitch(tmp_path):
    for split, notes in (("train", ["guitar_acoustic_021-081-075", "brass_acoustic_006-060-100"]),
                         ("valid", ["flute_synthetic_000-070-050"]), ("test", ["vocal_acoustic_000-055-127"])):
        d = tmp_path / "nsynth-data" / f"nsynth-{split}"
        ex = {}
        for n, note in enumerate(notes):
            fam = note.split("_")[0]
            ex[note] = {"note_str": note, "pitch": int(note.split("-")[1]), "instrument_family_str": fam}
            wav(d / "audio" / f"{note}.wav", seed=n)
        d.mkdir(parents=True, exist_ok=True)
        (d / "examples.json").write_text(json.dumps(ex))
    fam = load_task_data("nsynth", tmp_path, target="family")
    assert [e.target for e in fam.split("train")] == ["brass", "guitar"]
    pitch = load_task_data("nsynth", tmp_path, target="pitch")
    assert pitch.split("valid")[0].target == "70" and len(pitch.classes) == 128


def test_vocalset_singer_and_technique_lists(tmp_path):
    lines = {"train": ["belt/f1_arpeggios_belt_a_00.wav", "vibrato/m3_scales_vibrato_00.wav"],
             "valid": ["breathy/f2_long_breathy_01.wav"], "test": ["spoken/m11_excerpts_spoken_02.wav"]}
    for split, ls in lines.items():
        for suffix in "st":
            (tmp_path / f"{split}_{suffix}.txt").write_text("\n".join(ls) + "\n")
        for n, line in enumerate(ls):
            wav(tmp_path / "audio" / line, seed=n)
    s = load_task_data("vocalset", tmp_path, target="singer")
    t = load_task_data("vocalset", tmp_path, target="technique")
    assert [e.target for e in s.split("train")] == ["f1", "m3"] and s.split("test")[0].target == "m11"
    assert [e.target for e in t.split("train")] == ["belt", "vibrato"]


def test_mtg_split0_tsv_with_crlf_and_vocab_order(tmp_path):
    d = tmp_path / "mtg-jamendo-dataset" / "data" / "splits" / "split-0"
    d.mkdir(parents=True)
    head = "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS\r\n"
    rows = {"train": [("track_0000214", "41/214.mp3", ["genre---rock", "mood/theme---happy"]),
                      ("track_0000215", "15/215.mp3", ["genre---pop"])],
            "validation": [("track_0000300", "00/300.mp3", ["genre---rock"])],
            "test": [("track_0000301", "01/301.mp3", ["instrument---piano"])]}
    for split, rs in rows.items():
        body = "".join(f"{tid}\tartist_1\talbum_1\t{p}\t200.0\t" + "\t".join(tags) + "\r\n" for tid, p, tags in rs)
        (d / f"autotagging_top50tags-{split}.tsv").write_text(head + body)
        for n, (_, p, _) in enumerate(rs):
            wav(tmp_path / "audio-low" / p.replace(".mp3", ".low.mp3"), seed=n, fmt="MP3")
    t = load_task_data("mtg", tmp_path, subset="top50tags")
    assert t.classes == ["genre---rock", "mood/theme---happy", "genre---pop", "instrument---piano"]
    assert t.split("valid")[0].path.name == "300.low.mp3"
    assert t.counts() == {"train": 2, "valid": 1, "test": 1} and not t.problems


def test_datakit_frame_labels_are_exact(datakit):
    """Beats on the score grid (tempo and start_ql from the manifest), melody notes from the clip's MIDI."""
    from musiccore.data.manifest import load_manifest

    rows = {r["id"]: r for r in load_manifest("clips", root=datakit)}
    beats = load_task_data("datakit", datakit, target="beat")
    e = beats.examples[0]
    r = rows[e.id]
    b = np.asarray(e.target["beats"])
    assert np.allclose(np.diff(b), 60.0 / r["beat_bpm"]) and 0 <= b[0] < 60.0 / r["beat_bpm"] + 1e-9
    mel = load_task_data("datakit", datakit, target="melody")
    notes = mel.examples[0].target["notes"]
    assert notes and all(0 <= s < t and 0 <= p < 128 for s, t, p in notes)
    quarter = 60.0 / rows[mel.examples[0].id]["tempo_bpm"]
    # note boundaries fall on the score's rhythmic grid (multiples of a 1/12 quarter) at the clip's single tempo
    grid = np.array([s for s, _, _ in notes]) / (quarter / 12)
    assert np.allclose(grid, np.round(grid), atol=1e-3)
