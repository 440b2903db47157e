"""Lyrics splitting: upstream's format plus clear errors for bad input."""

import pytest

from yue.lyrics import LyricsError, Section, parse_section_string, split_lyrics


def test_split_matches_upstream_format():
    secs = split_lyrics("[verse]\n  line one\nline two  \n\n[chorus]\nla la\n")
    assert secs == [Section("verse", "line one\nline two"), Section("chorus", "la la")]
    assert secs[0].render() == "[verse]\nline one\nline two\n\n"
    assert parse_section_string(secs[1].render()) == secs[1]


def test_label_case_kept_and_crlf_normalised():
    secs = split_lyrics("[Verse]\r\nhello\r\n")
    assert secs == [Section("Verse", "hello")]


def test_no_labels_is_an_error():
    with pytest.raises(LyricsError, match="no section labels"):
        split_lyrics("just some words\nwithout labels", source="song.txt")


def test_text_before_first_label_is_an_error():
    with pytest.raises(LyricsError, match="before the first section"):
        split_lyrics("intro words\n[verse]\nhello")


def test_unknown_label_is_an_error_unless_allowed():
    with pytest.raises(LyricsError, match=r"unknown section label \[spoken\]"):
        split_lyrics("[spoken]\nhello")
    assert split_lyrics("[spoken]\nhello", allow_unknown=True)[0].label == "spoken"


@pytest.mark.parametrize("label", ["pre-chorus", "verse 2", "副歌"])
def test_malformed_labels(label):
    with pytest.raises(LyricsError, match="malformed section label"):
        split_lyrics(f"[verse]\nhello\n[{label}]\nworld")


def test_empty_section_is_kept_for_instrumentals():
    secs = split_lyrics("[intro]\n\n[verse]\nhello\n")
    assert secs[0] == Section("intro", "")
    assert secs[0].render() == "[intro]\n\n\n"


def test_empty_lyrics():
    with pytest.raises(LyricsError, match="empty"):
        split_lyrics("  \n ")


def test_non_latin_lyrics_accepted():
    secs = split_lyrics("[verse]\n夜空の星 звёзды 별빛\n")
    assert secs[0].text == "夜空の星 звёзды 별빛"
