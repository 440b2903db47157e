"""Offline data kit: manifests and fields, determinism, resume, exact labels, bad items, CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("music21")

from musiccore import data as kitdata  # noqa: E402
from musiccore.data import clips as clips_mod  # noqa: E402
from musiccore.data import tunes as tunes_mod  # noqa: E402
from musiccore.data.manifest import sha1_text, sha256_file, split_of  # noqa: E402
from musiccore.testing import require_tool  # noqa: E402

SMALL = dict(tunes=24, clips=4, songs=0, seed=3, clip_seconds=3.0)

TUNE_FIELDS = {"id", "collection", "title", "key", "meter", "unit_length", "rhythm", "origin", "abc", "split", "sha1"}
CLIP_FIELDS = {"id", "path", "duration", "sample_rate", "key", "meter", "tempo_bpm", "programs", "instruments",
               "source", "split", "sha256"}


def _need_render():
    require_tool("fluidsynth")
    from musiccore.render import ToolNotFoundError, find_soundfont

    try:
        find_soundfont()
    except ToolNotFoundError as e:  # no soundfont installed: skip; any other error is a bug and fails
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def two_kits(tmp_path_factory):
    """The same small kit built twice: with 2 worker processes and inline (1 worker)."""
    _need_render()
    a = tmp_path_factory.mktemp("kitA")
    b = tmp_path_factory.mktemp("kitB")
    rep_a = kitdata.build(a, workers=2, **SMALL)
    rep_b = kitdata.build(b, workers=1, **SMALL)
    return a, b, rep_a, rep_b


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir()) if p.suffix in (".wav", ".mid")}


# ----------------------------------------------------------------------------------------------- datakit fixture
def test_datakit_fixture_sizes_and_fields(datakit):
    tunes = kitdata.load_manifest("tunes", root=datakit)
    clips = kitdata.load_manifest("clips", root=datakit)
    assert len(tunes) == 40 and len(clips) == 6
    for t in tunes:
        assert TUNE_FIELDS <= t.keys()
        assert t["abc"].startswith("X:") and "\nK:" in t["abc"]
        assert t["sha1"] == sha1_text(t["abc"])
        assert t["collection"] in tunes_mod.PUBLIC_COLLECTIONS  # Essen only with --essen
        assert t["split"] == split_of(t["id"])
    assert len({t["id"] for t in tunes}) == 40
    for c in clips:
        assert CLIP_FIELDS <= c.keys()
        wav = kitdata.resolve(c["path"], root=datakit)
        assert wav.is_file() and sha256_file(wav) == c["sha256"]
        assert c["sample_rate"] == 24000 and c["duration"] == pytest.approx(5.0)
        assert len(c["programs"]) == len(c["instruments"]) >= 1
        assert all(0 <= p <= 127 for p in c["programs"])
        assert c["key"].split()[1] in ("major", "minor")
    # both source kinds are present (they alternate in the candidate order)
    assert {c["source_kind"] for c in clips} == {"chorale", "abc"}
    problems = kitdata.verify(datakit)
    assert problems["tunes"] == [] and problems["clips"] == [] and problems.get("songs", []) == []


def test_datakit_clip_audio_matches_manifest(datakit):
    from musiccore.audio import audio_info, load_audio

    for c in kitdata.load_manifest("clips", root=datakit):
        p = kitdata.resolve(c["path"], root=datakit)
        info = audio_info(p)
        assert info.channels == 1 and info.sample_rate == c["sample_rate"]
        assert info.frames == round(c["duration"] * c["sample_rate"])
        wav, _ = load_audio(p)
        assert 0.5 < abs(wav).max() <= 0.91  # peak-normalised to 0.9 (16-bit rounding), not silent


def test_datakit_songs_rows(datakit):
    path = datakit / "songs/manifest.jsonl"
    if not path.exists() or not kitdata.load_manifest("songs", root=datakit):
        pytest.skip("songs step not available (needs Festival and musiccore.data.songs)")
    for s in kitdata.load_manifest("songs", root=datakit):
        for f in ("vocal", "accompaniment", "mix"):
            p = kitdata.resolve(s[f], root=datakit)
            assert p.is_file() and sha256_file(p) == s["sha256"][f]
        assert s["split"] in kitdata.SPLITS


# ----------------------------------------------------------------------------------------------- labels
def _midi_events(path: Path):
    from music21 import midi

    mf = midi.MidiFile()
    mf.open(str(path))
    mf.read()
    mf.close()
    tempos, programs = [], []
    for tr in mf.tracks:
        for e in tr.events:
            if e.type == midi.MetaEvents.SET_TEMPO:
                tempos.append(int.from_bytes(e.data, "big"))
            elif e.type == midi.ChannelVoiceMessages.PROGRAM_CHANGE:
                programs.append(e.data)
    return tempos, programs


def test_clip_labels_match_the_score(datakit):
    from music21 import corpus

    from musiccore.abc import parse_score

    clips = kitdata.load_manifest("clips", root=datakit)
    tunes = {t["id"]: t for t in kitdata.load_manifest("tunes", root=datakit)}
    all_sources = {s.id: s for s in tunes_mod.list_sources(tunes_mod.PUBLIC_COLLECTIONS)[0]}
    checked = set()
    for c in clips:
        # key: music21's key of the source
        if c["source_kind"] == "chorale":
            k = corpus.parse(c["source"]).analyze("key")
        else:
            abc = tunes[c["source"]]["abc"] if c["source"] in tunes else all_sources[c["source"]].abc
            k, _ = clips_mod._score_key(parse_score(abc))
        assert c["key"] == clips_mod.key_label(k.tonic.name, k.mode), c["id"]
        assert c["mode"] == k.mode
        # tempo: the only tempo of the rendered MIDI file
        tempos, programs = _midi_events(kitdata.resolve(c["midi"], root=datakit))
        assert tempos and all(t == round(60_000_000 / c["tempo_bpm"]) for t in tempos), (tempos, c["tempo_bpm"])
        # programs: exactly the recorded GM programs
        assert set(programs) == set(c["programs"])
        assert c["instruments"] == [clips_mod.GM_NAMES[p] for p in c["programs"]]
        beat_ql = {"6/8": 1.5, "9/8": 1.5, "12/8": 1.5, "2/2": 2.0, "3/8": 1.5}.get(c["meter"], 1.0)
        if c["meter"] in ("2/4", "3/4", "4/4", "6/8", "9/8", "12/8", "2/2"):
            assert c["beat_bpm"] == pytest.approx(c["tempo_bpm"] / beat_ql)
        # splits follow the source piece, so a clip shares its tune's split
        assert c["split"] == split_of(c["source_id"])
        if c["source"] in tunes:
            assert c["split"] == tunes[c["source"]]["split"]
        checked.add(c["source_kind"])
    assert checked == {"chorale", "abc"}


def test_key_label_families():
    metrics = pytest.importorskip("musiccore.eval.metrics")
    for tonic in ("C", "C#", "D-", "E-", "F#", "G-", "A-", "B-", "B", "E#", "C-"):
        for mode in ("major", "minor", "dorian", "mixolydian"):
            label = clips_mod.key_label(tonic, mode)
            assert metrics.key_index(label) == metrics.key_index(metrics.key_name(metrics.key_index(label)))
    assert metrics.key_index(clips_mod.key_label("B-", "major")) == 10
    assert metrics.key_index(clips_mod.key_label("F#", "dorian")) == 18
    assert clips_mod.key_label("B-", "major") == "Bb major"
    assert clips_mod.key_label("F#", "minor") == "F# minor"
    assert clips_mod.key_label("D", "mixolydian") == "D major"
    assert clips_mod.key_label("A", "dorian") == "A minor"


def test_excerpt_loops_short_pieces_and_drops_rests():
    from music21 import note, stream

    p = stream.Part()
    for i, name in enumerate(["C4", "D4", "E4"]):
        p.insert(i, note.Note(name, quarterLength=1))
    p.insert(3, note.Rest(quarterLength=1))
    s = stream.Score()
    s.insert(0, p)
    ex, n = clips_mod.excerpt(s, 0.0, 10.0)  # piece lasts 4 quarters -> looped
    offs = [float(x.offset) for x in ex.parts[0].notes]
    assert n == 8 and offs == [0, 1, 2, 4, 5, 6, 8, 9]
    ex2, n2 = clips_mod.excerpt(s, 5.0, 2.0)  # a later window, shifted to 0
    assert [x.pitch.name for x in ex2.parts[0].notes] == ["D", "E"] and n2 == 2


# ----------------------------------------------------------------------------------------------- determinism
def test_two_builds_same_seed_are_identical(two_kits):
    a, b, rep_a, rep_b = two_kits
    for rel in ("tunes/tunes.jsonl", "clips/manifest.jsonl"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    for c in kitdata.load_manifest("clips", root=a):
        assert sha256_file(a / c["path"]) == sha256_file(b / c["path"]) == c["sha256"]
        assert sha256_file(a / c["midi"]) == sha256_file(b / c["midi"])
    assert rep_a["kinds"]["tunes"]["built"] == SMALL["tunes"] and rep_a["kinds"]["clips"]["built"] == SMALL["clips"]
    assert [x["id"] for x in rep_a["bad"]] == [x["id"] for x in rep_b["bad"]]


def test_other_seed_gives_other_selection(two_kits, tmp_path):
    a = two_kits[0]
    kitdata.build(tmp_path, tunes=SMALL["tunes"], clips=0, songs=0, seed=SMALL["seed"] + 1, workers=1)
    ids_a = {t["id"] for t in kitdata.load_manifest("tunes", root=a)}
    ids_b = {t["id"] for t in kitdata.load_manifest("tunes", root=tmp_path)}
    assert ids_a != ids_b


# ----------------------------------------------------------------------------------------------- resume
def test_rebuild_does_no_work_and_rebuilds_only_deleted_items(two_kits, tmp_path):
    root = tmp_path / "kit"
    shutil.copytree(two_kits[0], root)
    before = _mtimes(root / "clips")
    tunes_before = (root / "tunes/tunes.jsonl").stat().st_mtime_ns

    rep = kitdata.build(root, workers=2, **SMALL)
    assert rep["kinds"]["tunes"]["built"] == 0 and rep["kinds"]["clips"]["built"] == 0
    assert rep["kinds"]["clips"]["reused"] == SMALL["clips"]
    assert _mtimes(root / "clips") == before
    assert (root / "tunes/tunes.jsonl").stat().st_mtime_ns == tunes_before

    clips = kitdata.load_manifest("clips", root=root)
    victim = clips[1]
    (root / victim["path"]).unlink()
    rep = kitdata.build(root, workers=2, **SMALL)
    assert rep["kinds"]["clips"]["built"] == 1 and rep["kinds"]["clips"]["reused"] == SMALL["clips"] - 1
    assert rep["kinds"]["tunes"]["built"] == 0
    after = _mtimes(root / "clips")
    changed = {n for n in before if after.get(n) != before[n]}
    assert changed == {Path(victim["path"]).name, Path(victim["midi"]).name}  # that clip only (wav + its MIDI)
    assert kitdata.load_manifest("clips", root=root) == clips  # same rows, same checksums
    assert kitdata.verify(root)["clips"] == []


def test_corrupt_item_is_detected_and_rebuilt(two_kits, tmp_path):
    root = tmp_path / "kit"
    shutil.copytree(two_kits[0], root)
    clips = kitdata.load_manifest("clips", root=root)
    wav = root / clips[0]["path"]
    data = bytearray(wav.read_bytes())
    data[-100:] = b"\x00" * 100
    wav.write_bytes(bytes(data))
    problems = kitdata.verify(root)["clips"]
    assert len(problems) == 1 and "sha256" in problems[0] and clips[0]["id"] in problems[0]
    from musiccore.data.__main__ import main

    assert main(["verify", "--root", str(root)]) == 1
    rep = kitdata.build(root, workers=1, **SMALL)
    assert rep["kinds"]["clips"]["built"] == 1
    assert sha256_file(wav) == clips[0]["sha256"]
    assert main(["verify", "--root", str(root)]) == 0


def test_interrupted_build_resumes_from_partial_log(two_kits, tmp_path):
    """A build killed before writing its manifests keeps every finished item (the .partial log)."""
    root = tmp_path / "kit"
    shutil.copytree(two_kits[0], root)
    for rel in ("tunes/tunes.jsonl", "clips/manifest.jsonl"):
        os.replace(root / rel, root / (rel + ".partial"))
    (root / "kit.json").unlink()
    rep = kitdata.build(root, workers=1, **SMALL)
    assert rep["kinds"]["tunes"]["built"] == 0 and rep["kinds"]["tunes"]["reused"] == SMALL["tunes"]
    assert rep["kinds"]["clips"]["built"] == 0 and rep["kinds"]["clips"]["reused"] == SMALL["clips"]
    assert not (root / "clips/manifest.jsonl.partial").exists()
    assert (root / "clips/manifest.jsonl").read_bytes() == (two_kits[0] / "clips/manifest.jsonl").read_bytes()


def test_smaller_rebuild_prunes_orphans(two_kits, tmp_path):
    root = tmp_path / "kit"
    shutil.copytree(two_kits[0], root)
    rep = kitdata.build(root, workers=1, **(SMALL | {"clips": 2}))
    assert rep["kinds"]["clips"]["built"] == 0  # the first 2 good candidates are a prefix of the first 4
    ids = {c["id"] for c in kitdata.load_manifest("clips", root=root)}
    assert len(ids) == 2
    assert {p.stem for p in (root / "clips").iterdir() if p.suffix in (".wav", ".mid")} == ids


# ----------------------------------------------------------------------------------------------- bad items
def test_bad_items_are_skipped_counted_and_reported(tmp_path, monkeypatch):
    _need_render()
    real_sources = tunes_mod.list_sources
    bad_tune = tunes_mod.TuneSource("zz-bad-tune", "ryansMammoth", "none", "1", "X:1\nT:broken\nM:4/4\nK:G\nAB[cd|\n")

    def sources_with_bad(colls):
        src, dups = real_sources(colls)
        return [bad_tune] + src, dups

    real_cands = clips_mod.list_candidates
    bad_clip = clips_mod.ClipSource("zz-bad-clip-c0", "abc", "zz-bad-clip", "zz-bad-clip", 0,
                                    "X:1\nT:no key\nM:4/4\nL:1/8\nK:HP\nABcd efga|\n")

    def cands_with_bad(n, seed, sources):
        return [bad_clip] + real_cands(n, seed, sources)

    monkeypatch.setattr(tunes_mod, "list_sources", sources_with_bad)
    monkeypatch.setattr(tunes_mod, "shuffled", lambda s, seed, salt="tunes": list(s))  # keep the bad one first
    monkeypatch.setattr(clips_mod, "list_candidates", cands_with_bad)
    rep = kitdata.build(tmp_path, tunes=10, clips=2, songs=0, clip_seconds=2.0, workers=1)
    assert rep["kinds"]["tunes"]["built"] == 10 and rep["kinds"]["clips"]["built"] == 2
    bad = {b["id"]: b for b in rep["bad"]}
    assert "zz-bad-tune" in bad and "invalid ABC" in bad["zz-bad-tune"]["reason"]
    assert "zz-bad-clip-c0" in bad and "K:" in bad["zz-bad-clip-c0"]["reason"]
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert {b["id"] for b in on_disk["bad"]} == set(bad)
    assert "zz-bad-tune" not in {t["id"] for t in kitdata.load_manifest("tunes", root=tmp_path)}
    assert not list((tmp_path / "clips").glob("zz-bad*"))  # no partial files of the bad clip
    assert not [p for p in (tmp_path / "clips").iterdir() if ".tmp" in p.name]

    # a re-run does not retry known-bad items (same recipe) but still reports them
    (tmp_path / "clips" / (kitdata.load_manifest("clips", root=tmp_path)[0]["id"] + ".wav")).unlink()
    calls = []
    real_render = clips_mod.render_clip
    monkeypatch.setattr(clips_mod, "render_clip", lambda src, spec: (calls.append(src.id), real_render(src, spec))[1])
    rep2 = kitdata.build(tmp_path, tunes=10, clips=2, songs=0, clip_seconds=2.0, workers=1)
    assert "zz-bad-clip-c0" not in calls and len(calls) == 1
    assert any(b["id"] == "zz-bad-clip-c0" and b.get("cached") for b in rep2["bad"])


# ----------------------------------------------------------------------------------------------- splits, API, CLI
def test_split_is_deterministic_and_about_80_10_10():
    ids = [f"tune-{i}" for i in range(3000)]
    splits = [split_of(i) for i in ids]
    assert splits == [split_of(i) for i in ids]
    frac = {s: splits.count(s) / len(ids) for s in kitdata.SPLITS}
    assert 0.77 < frac["train"] < 0.83 and 0.08 < frac["valid"] < 0.12 and 0.08 < frac["test"] < 0.12


def test_load_manifest_errors_and_split_filter(tmp_path, two_kits):
    with pytest.raises(kitdata.DataKitError, match="tunes.jsonl"):
        kitdata.load_manifest("tunes", root=tmp_path)
    with pytest.raises(ValueError, match="unknown manifest kind"):
        kitdata.load_manifest("midi", root=tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        kitdata.load_manifest("tunes", split="dev", root=tmp_path)
    a = two_kits[0]
    all_rows = kitdata.load_manifest("tunes", root=a)
    parts = [kitdata.load_manifest("tunes", split=s, root=a) for s in kitdata.SPLITS]
    assert sum(map(len, parts)) == len(all_rows) and parts[0]
    assert kitdata.resolve("clips/x.wav", root=a) == a / "clips/x.wav"
    assert kitdata.resolve("/abs/x.wav", root=a) == Path("/abs/x.wav")


def test_default_root_comes_from_environment(tmp_path, monkeypatch, two_kits):
    monkeypatch.setenv("MUSIC_DATA_DIR", str(two_kits[0]))
    assert len(kitdata.load_manifest("tunes")) == SMALL["tunes"]
    assert kitdata.resolve("tunes/tunes.jsonl") == two_kits[0] / "tunes/tunes.jsonl"


def test_build_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown kind"):
        kitdata.build(tmp_path, only=["midi"])
    with pytest.raises(ValueError, match="non-negative"):
        kitdata.build(tmp_path, tunes=-1)
    with pytest.raises(ValueError, match="positive"):
        kitdata.build(tmp_path, clip_seconds=0)


def test_cli_build_info_verify(tmp_path, capsys):
    from musiccore.data.__main__ import main

    rc = main(["build", "--root", str(tmp_path), "--tunes", "12", "--clips", "0", "--songs", "0",
               "--only", "tunes", "--workers", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "tunes" in out and "built" in out
    assert len(kitdata.load_manifest("tunes", root=tmp_path)) == 12
    assert main(["info", "--root", str(tmp_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parts"]["tunes"]["count"] == 12
    assert main(["verify", "--root", str(tmp_path)]) == 0
    with pytest.raises(SystemExit):
        main(["build", "--only", "midi"])
    readme = (tmp_path / "README.md").read_text()
    assert "public domain" in readme and "NON-COMMERCIAL" not in readme


def test_essen_is_opt_in_with_licence_note(tmp_path):
    kitdata.build(tmp_path, tunes=60, clips=0, songs=0, essen=True, workers=1)
    colls = {t["collection"] for t in kitdata.load_manifest("tunes", root=tmp_path)}
    assert "essenFolksong" in colls
    assert "NON-COMMERCIAL" in (tmp_path / "README.md").read_text()
    assert "non-commercial" in (tmp_path / "LICENSE-essen.txt").read_text().lower()
    # rebuilding without --essen drops the Essen tunes and the notice
    kitdata.build(tmp_path, tunes=60, clips=0, songs=0, workers=1)
    assert "essenFolksong" not in {t["collection"] for t in kitdata.load_manifest("tunes", root=tmp_path)}
    assert "NON-COMMERCIAL" not in (tmp_path / "README.md").read_text()
    assert not (tmp_path / "LICENSE-essen.txt").exists()
