"""The songs tier of the kit at scale (issue 15, item 5): more songs than sources (derived renderings that keep
their source's split), parallel and resumable builds, and a plain rebuild that never shrinks the kit.

The build tests replace Festival/fluidsynth by a fast fake ``build_song`` (the real one is tested in
test_data_songs.py); what is tested here is the builder around it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("music21")

from musiccore import data as kitdata  # noqa: E402
from musiccore.data import builder  # noqa: E402
from musiccore.data import songs as songs_mod  # noqa: E402
from musiccore.data.manifest import split_of  # noqa: E402


def test_renderings_extend_the_sources_and_keep_their_split():
    base = songs_mod.select_song_sources(10_000, seed=0)
    n_sources = sum(s.rendering == 0 for s in base)
    assert n_sources == 348  # 10 English + 338 chorale files with lyrics
    assert len(base) == n_sources * (1 + songs_mod.MAX_RENDERINGS)  # the achievable maximum
    assert len({s.id for s in base}) == len(base)
    assert all(s.rendering == 0 for s in base[:n_sources])  # every real source before any rendering
    by_source = {}
    for s in base:
        by_source.setdefault(s.source_id, []).append(s)
        if s.rendering:
            assert s.id.endswith(f"-r{s.rendering}") and s.transpose in (-4, -3, -2, -1, 1, 2, 3, 4)
        else:
            assert s.transpose == 0
    for sid, group in by_source.items():  # renderings of one piece: one split (never straddling)
        assert len({split_of(g.source_id) for g in group}) == 1
    assert songs_mod.select_song_sources(400, seed=0) == base[:400]  # a prefix: growing the kit keeps its songs
    assert songs_mod.select_song_sources(400, seed=1) != base[:400]


def test_versions_of_one_chorale_share_a_split():
    """bwv18.5-lz / -w are two versions of one chorale (the only such pair with lyrics): same split."""
    import re

    specs = [s for s in songs_mod.select_song_sources(348, 0) if s.source.startswith("music21:bach/")]
    groups = {}
    for s in specs:
        groups.setdefault(re.sub(r"-(lz|w|sc|a)$", "", s.source_id), set()).add(split_of(s.source_id))
    assert all(len(v) == 1 for v in groups.values())


def test_transposed_rendering_moves_notes_chords_and_key():
    piece = songs_mod._Piece(title="t", words=[songs_mod._Word("la", [[songs_mod._Note(0.0, 1.0, 60)]])],
                             parts=[[songs_mod._Note(0.0, 1.0, 48)]], part_kinds=["voice"], meter=(4, 4),
                             pickup=0.0, chords=[(0.0, 1.0, 11, [11, 2, 6])], key=(11, "minor"))  # fmt: skip
    songs_mod._transpose(piece, 3)
    assert piece.words[0].notes[0].midi == 63 and piece.parts[0][0].midi == 51
    assert piece.chords == [(0.0, 1.0, 2, [2, 5, 9])] and piece.key == (2, "minor")


# ---------------------------------------------------------------------------------------------- builds (fake songs)
def _fake_specs(n, seed):
    return [songs_mod.SongSpec(id=f"fake-{i:03d}", source=f"fake:{i}", source_id=f"piece-{i // 2}")
            for i in range(min(n, 40))]  # fmt: skip


def _fake_build_song(spec, out_dir, seed):
    folder = Path(out_dir) / spec.id
    folder.mkdir(parents=True, exist_ok=True)
    for f in ("vocal", "accompaniment", "mix"):
        (folder / f"{f}.wav").write_bytes(f"{spec.id}:{f}:{seed}".encode())
    rel = f"{Path(out_dir).name}/{spec.id}"
    return {"id": spec.id, "source_id": spec.source_id, "vocal": f"{rel}/vocal.wav",
            "accompaniment": f"{rel}/accompaniment.wav", "mix": f"{rel}/mix.wav", "split": split_of(spec.source_id)}


@pytest.fixture
def fake_songs(monkeypatch):
    monkeypatch.setattr(songs_mod, "select_song_sources", _fake_specs)
    monkeypatch.setattr(songs_mod, "build_song", _fake_build_song)
    monkeypatch.setattr(builder.shutil, "which", lambda name: f"/usr/bin/{name}")  # festival & co "installed"


def _ids(root):
    return [r["id"] for r in kitdata.load_manifest("songs", root=root)]


def test_parallel_build_equals_inline(fake_songs, tmp_path):
    a = kitdata.build(tmp_path / "a", tunes=0, clips=0, songs=12, workers=2)
    b = kitdata.build(tmp_path / "b", tunes=0, clips=0, songs=12, workers=1)
    assert a["kinds"]["songs"]["built"] == b["kinds"]["songs"]["built"] == 12
    assert _ids(tmp_path / "a") == _ids(tmp_path / "b") == [f"fake-{i:03d}" for i in range(12)]
    for r in kitdata.load_manifest("songs", root=tmp_path / "a"):
        assert r["split"] == split_of(r["source_id"])


def test_killed_build_resumes_and_keeps_finished_songs(fake_songs, tmp_path, monkeypatch):
    calls = []

    def dies_after_five(spec, out_dir, seed):
        if len(calls) == 5:
            raise KeyboardInterrupt  # a kill in the middle of the build
        calls.append(spec.id)
        return _fake_build_song(spec, out_dir, seed)

    monkeypatch.setattr(songs_mod, "build_song", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        kitdata.build(tmp_path, tunes=0, clips=0, songs=10, workers=1)
    assert not (tmp_path / "songs/manifest.jsonl").exists()
    assert len((tmp_path / "songs/manifest.jsonl.partial").read_text().splitlines()) == 5
    calls.clear()
    monkeypatch.setattr(songs_mod, "build_song", lambda *a: (calls.append(a[0].id), _fake_build_song(*a))[1])
    rep = kitdata.build(tmp_path, tunes=0, clips=0, songs=10, workers=1)
    assert rep["kinds"]["songs"]["reused"] == 5 and rep["kinds"]["songs"]["built"] == 5
    assert calls == [f"fake-{i:03d}" for i in range(5, 10)]  # only the songs that were not finished
    assert _ids(tmp_path) == [f"fake-{i:03d}" for i in range(10)]


def test_plain_rebuild_keeps_the_kit_size(fake_songs, tmp_path):
    kitdata.build(tmp_path, tunes=0, clips=0, songs=14, workers=1)
    rep = kitdata.build(tmp_path, tunes=0, clips=0, workers=1)  # songs=None: `make data` without SONGS
    assert rep["kinds"]["songs"]["requested"] == 14 and rep["kinds"]["songs"]["built"] == 0
    assert len(_ids(tmp_path)) == 14
    fresh = kitdata.build(tmp_path / "new", tunes=0, clips=0, workers=1)  # a new kit: the default 20
    assert fresh["kinds"]["songs"]["requested"] == kitdata.DEFAULTS["songs"] == 20
    rep = kitdata.build(tmp_path, tunes=0, clips=0, songs=6, workers=1)  # an explicit smaller size shrinks
    assert len(_ids(tmp_path)) == 6 and len([p for p in (tmp_path / "songs").iterdir() if p.is_dir()]) == 6
    assert json.loads((tmp_path / "kit.json").read_text())["parts"]["songs"]["params"]["n"] == 6


def test_cli_songs_flag(fake_songs, tmp_path, capsys):
    from musiccore.data.__main__ import main

    assert main(["build", "--root", str(tmp_path), "--tunes", "0", "--clips", "0", "--songs", "8",
                 "--workers", "2"]) == 0  # fmt: skip
    assert len(_ids(tmp_path)) == 8
    assert main(["build", "--root", str(tmp_path), "--tunes", "0", "--clips", "0"]) == 0
    assert "requested     8" in capsys.readouterr().out and len(_ids(tmp_path)) == 8
