"""Offline rendering: music21 score -> MIDI (GM programs, channels, tempo) and MIDI -> WAV (fluidsynth).

Tools come from Debian packages (``apt-get install fluidsynth timgm6mb-soundfont abcmidi``). A missing
tool raises :class:`ToolNotFoundError` (a ``RuntimeError``) naming the tool and the package to install.
Every output file is written atomically (:func:`musiccore.runs.atomic_path`), and every subprocess runs
with a timeout.

A renderer's output is checked before it is returned: a MIDI without notes, a WAV shorter than its MIDI
or silent (peak below :data:`SILENCE_PEAK`), and (through :func:`check_midi_complete`) a MIDI with fewer
notes than its source or whose last note starts earlier raise :class:`RenderError` naming the file and the
reason; external tools often exit 0 in those cases.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from musiccore.runs import atomic_path

log = logging.getLogger(__name__)

__all__ = [
    "ToolNotFoundError",
    "RenderError",
    "MidiStats",
    "SILENCE_PEAK",
    "SOUNDFONT_CANDIDATES",
    "find_soundfont",
    "tool_available",
    "require_tool",
    "run_tool",
    "score_to_midi",
    "midi_to_wav",
    "midi_stats",
    "check_midi_complete",
    "abc_to_svg",
]

# Debian package that provides each external tool (for the install hint in errors).
TOOL_PACKAGES = {
    "abc2midi": "abcmidi",
    "midi2abc": "abcmidi",
    "abc2abc": "abcmidi",
    "fluidsynth": "fluidsynth",
    "timidity": "timidity",
    "sox": "sox",
    "abcm2ps": "abcm2ps",
}

SOUNDFONT_CANDIDATES = (
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
)


class ToolNotFoundError(RuntimeError):
    """An external program (or the soundfont) is not installed; the message says how to install it."""


class RenderError(RuntimeError):
    """An external renderer ran but failed (non-zero exit, no output, timeout) or its output is cut short or
    silent; names the file (or tune) and the reason."""


SILENCE_PEAK = 1e-3
"""A rendered WAV whose peak stays below this (-60 dBFS, full scale 1.0) is silent: :func:`midi_to_wav` fails it."""


@dataclasses.dataclass(frozen=True)
class MidiStats:
    """What a MIDI file plays (:func:`midi_stats`)."""

    n_notes: int  # note-ons with a velocity above 0, all tracks and channels
    end_quarters: float  # when the last note ends, in quarter notes
    last_onset_quarters: float  # when the latest note starts, in quarter notes
    end_seconds: float  # the same in seconds, through the file's tempo changes (120 bpm before the first)


def midi_stats(path: str | Path) -> MidiStats:
    """Count the notes of a MIDI file and find when the last one starts and ends (music21's MIDI reader).

    Raises :class:`RenderError` naming the file when it cannot be read as MIDI.
    """
    from music21 import midi

    path = Path(path)
    mf = midi.MidiFile()
    try:
        mf.open(str(path))
        try:
            mf.read()
        finally:
            mf.close()
    except Exception as e:  # noqa: BLE001 - music21 raises many types for a damaged file
        raise RenderError(f"{path}: cannot read the MIDI file ({type(e).__name__}: {str(e)[:200]})") from e
    tpq = mf.ticksPerQuarterNote or 480
    n_notes, end_tick, onset_tick = 0, 0, 0
    tempos: list[tuple[int, int]] = []  # (tick, microseconds per quarter note)
    for track in mf.tracks:
        tick = 0
        for ev in track.events:
            if isinstance(ev, midi.DeltaTime):
                tick += ev.time
                continue
            if ev.type == midi.ChannelVoiceMessages.NOTE_ON and ev.velocity:
                n_notes += 1
                end_tick, onset_tick = max(end_tick, tick), max(onset_tick, tick)
            elif ev.type in (midi.ChannelVoiceMessages.NOTE_OFF, midi.ChannelVoiceMessages.NOTE_ON):
                end_tick = max(end_tick, tick)  # a note-on with velocity 0 ends a note too
            elif ev.type == midi.MetaEvents.SET_TEMPO and isinstance(ev.data, bytes) and len(ev.data) == 3:
                tempos.append((tick, int.from_bytes(ev.data, "big")))
    seconds, last_tick, us_per_q = 0.0, 0, 500_000
    for tick, us in sorted(tempos):  # integrate the tempo map up to the last note's end
        if tick >= end_tick:
            break
        seconds += (tick - last_tick) / tpq * us_per_q / 1e6
        last_tick, us_per_q = tick, us
    seconds += (end_tick - last_tick) / tpq * us_per_q / 1e6
    return MidiStats(n_notes=n_notes, end_quarters=end_tick / tpq, last_onset_quarters=onset_tick / tpq,
                     end_seconds=seconds)


def check_midi_complete(midi: str | Path, *, min_notes: int, min_onset_quarters: float, what: str,
                        tool: str = "the renderer", slack_quarters: float = 0.05) -> MidiStats:
    """Raise :class:`RenderError` when a MIDI file plays fewer notes than ``min_notes`` or its latest note
    starts more than ``slack_quarters`` before ``min_onset_quarters``: ``tool`` cut it short. Returns its stats.

    Onsets rather than note ends are compared because players shorten notes (staccato, articulation) but do
    not move them. ``min_notes``/``min_onset_quarters`` are lower bounds from the source (e.g.
    :func:`musiccore.abc.tune_extent`); ``what`` names the source in the message (``X:3 "Tune": abc2midi wrote a
    truncated MIDI: ...``). The slack absorbs MIDI tick rounding (a 7-tuplet at 480 ticks a quarter is not exact).
    """
    st = midi_stats(midi)
    short = []
    if st.n_notes < min_notes:
        short.append(f"{st.n_notes} notes where the source strikes at least {min_notes}")
    if st.last_onset_quarters < min_onset_quarters - slack_quarters:
        short.append(f"its last note starts at quarter note {st.last_onset_quarters:g} where the source's "
                     f"starts at {min_onset_quarters:g}")
    if short:
        raise RenderError(f"{what}: {tool} wrote a truncated MIDI: " + "; ".join(short))
    return st


def tool_available(name: str) -> bool:
    return shutil.which(name) is not None


def require_tool(name: str) -> str:
    """Absolute path of ``name`` on PATH, or :class:`ToolNotFoundError` with the apt-get package."""
    path = shutil.which(name)
    if path is None:
        pkg = TOOL_PACKAGES.get(name, name)
        raise ToolNotFoundError(f"{name} not found on PATH; install it with `apt-get install {pkg}`")
    return path


def run_tool(cmd: Sequence[str], *, what: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run an external tool with a timeout and captured text output (never raises on a non-zero exit).

    ``what`` names the input in error messages. Raises :class:`ToolNotFoundError` if the program is
    missing and :class:`RenderError` on a timeout.
    """
    require_tool(cmd[0])
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, errors="replace")
    except subprocess.TimeoutExpired as e:
        raise RenderError(f"{what}: {cmd[0]} timed out after {timeout:g} s") from e


def find_soundfont() -> Path:
    """The GM soundfont to render with: ``$MUSIC_SOUNDFONT``, else TimGM6mb, FluidR3_GM, default-GM.

    Raises :class:`ToolNotFoundError` if ``MUSIC_SOUNDFONT`` points to a missing file or none is installed.
    """
    env = os.environ.get("MUSIC_SOUNDFONT")
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ToolNotFoundError(f"MUSIC_SOUNDFONT={env} does not exist")
        return p
    for c in SOUNDFONT_CANDIDATES:
        if Path(c).is_file():
            return Path(c)
    raise ToolNotFoundError(
        "no GM soundfont found (looked at $MUSIC_SOUNDFONT, " + ", ".join(SOUNDFONT_CANDIDATES)
        + "); install one with `apt-get install timgm6mb-soundfont`"
    )


def _free_channels():
    """MIDI channels 0..15 except 9 (drums in General MIDI), then wrap around."""
    chans = [c for c in range(16) if c != 9]
    i = 0
    while True:
        yield chans[i % len(chans)]
        i += 1


def score_to_midi(score, path: str | Path, programs: int | Sequence[int] | None = None,
                  tempo_bpm: float | None = None) -> Path:
    """Write a music21 stream as MIDI with a chosen General MIDI program per part; returns the path.

    The score is copied, never modified. For each part (a stream without parts is one part), existing
    ``Instrument`` objects are removed and a plain ``instrument.Instrument`` with ``midiProgram`` and its
    own ``midiChannel`` (0..15, skipping the drum channel 9) is inserted at offset 0. ``programs`` is one
    program for every part or one per part (0..127; ``None`` keeps each part's own instruments).
    ``tempo_bpm`` replaces every metronome mark with one quarter-note mark at the start. Written atomically.
    """
    from music21 import instrument, stream, tempo

    path = Path(path)
    s = copy.deepcopy(score)
    parts = list(s.parts) if isinstance(s, stream.Score) and len(s.parts) else [s]
    if programs is not None:
        progs = [int(programs)] * len(parts) if isinstance(programs, int) else [int(p) for p in programs]
        if len(progs) != len(parts):
            raise ValueError(f"{len(progs)} programs given for {len(parts)} parts")
        for p in progs:
            if not 0 <= p <= 127:
                raise ValueError(f"GM program must be 0..127, got {p}")
        chans = _free_channels()
        for part, prog in zip(parts, progs):
            for inst in list(part.recurse().getElementsByClass(instrument.Instrument)):
                inst.activeSite.remove(inst)
            inst = instrument.Instrument()
            inst.midiProgram = prog
            inst.midiChannel = next(chans)
            part.insert(0, inst)
    if tempo_bpm is not None:
        if not tempo_bpm > 0:
            raise ValueError(f"tempo_bpm must be > 0, got {tempo_bpm}")
        for mm in list(s.recurse().getElementsByClass(tempo.TempoIndication)):
            mm.activeSite.remove(mm)
        target = parts[0]
        first_measure = next(iter(target.getElementsByClass(stream.Measure)), None)
        (first_measure if first_measure is not None else target).insert(0, tempo.MetronomeMark(number=float(tempo_bpm)))
    if not any(True for _ in s.recurse().notes):
        raise ValueError("score_to_midi: the score has no notes")
    with atomic_path(path, suffix=".mid") as tmp:
        s.write("midi", fp=str(tmp))
        if programs is not None:
            # music21 gives parts with the same program one shared channel; put each part on its own
            _set_track_channels(tmp, [p.getInstrument(returnDefault=False).midiChannel for p in parts])
    return path


def _set_track_channels(path: Path, channels: list[int]) -> None:
    """Rewrite the channel of every channel event so that part track i uses ``channels[i]`` (0-based).

    music21 writes a conductor track and then one track per part, in part order; a file with another
    layout is left as written.
    """
    from music21 import midi

    mf = midi.MidiFile()
    mf.open(str(path))
    mf.read()
    mf.close()
    tracks = [tr for tr in mf.tracks if any(ev.isNoteOn() for ev in tr.events)]
    if len(tracks) != len(channels):
        log.warning("%s: %d note tracks for %d parts; channels left as music21 wrote them",
                    path, len(tracks), len(channels))
        return
    for tr, ch in zip(tracks, channels):
        for ev in tr.events:
            if isinstance(ev, midi.MidiEvent) and isinstance(ev.type, midi.ChannelVoiceMessages):
                ev.channel = ch + 1  # music21 numbers channels 1..16
    mf.open(str(path), "wb")
    mf.write()
    mf.close()


def midi_to_wav(midi: str | Path, wav: str | Path, sample_rate: int = 22050, gain: float = 0.6,
                soundfont: str | Path | None = None, timeout: float = 120, trim_tail: bool = True,
                min_peak: float | None = SILENCE_PEAK) -> Path:
    """Render a MIDI file to a 16-bit stereo WAV with fluidsynth; returns the WAV path.

    Runs ``fluidsynth -ni -q -F <tmp.wav> -T wav -r <sample_rate> -g <gain> <soundfont> <midi>`` with a
    timeout; the soundfont defaults to :func:`find_soundfont`. fluidsynth keeps rendering ~3 s of silence
    after the last note; ``trim_tail`` cuts the file 0.25 s after the last sample above -60 dBFS, so the
    WAV lasts as long as the music (plus the notes' release). The WAV appears only when rendering
    succeeded (atomic write). Raises ``FileNotFoundError`` for a missing MIDI, :class:`RenderError` when
    the file is not MIDI, has no notes, or fluidsynth fails, stops before the MIDI's last note ends or
    renders silence (peak below ``min_peak``, default :data:`SILENCE_PEAK`; ``None`` accepts silence), and
    :class:`ToolNotFoundError` when fluidsynth is missing.
    """
    midi, wav = Path(midi), Path(wav)
    if not midi.is_file():
        raise FileNotFoundError(f"{midi}: no such MIDI file")
    with midi.open("rb") as f:
        if f.read(4) != b"MThd":
            raise RenderError(f"{midi}: not a MIDI file (no MThd header)")
    if not 1000 <= int(sample_rate) <= 192000:
        raise ValueError(f"sample_rate {sample_rate} out of range")
    require_tool("fluidsynth")
    sf = Path(soundfont) if soundfont is not None else find_soundfont()
    if not sf.is_file():
        raise ToolNotFoundError(f"soundfont {sf} does not exist")
    with atomic_path(wav, suffix=".wav") as tmp:
        cmd = ["fluidsynth", "-ni", "-q", "-F", str(tmp), "-T", "wav", "-r", str(int(sample_rate)),
               "-g", f"{float(gain):g}", str(sf), str(midi)]
        proc = run_tool(cmd, what=str(midi), timeout=timeout)
        # fluidsynth exits 0 even when it rejects the MIDI ("fluidsynth: error: ..."), writing a header-only WAV
        errors = [ln for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if "error" in ln.lower()]
        if proc.returncode != 0 or errors or not tmp.exists() or _wav_frames(tmp) == 0:
            why = (errors[0] if errors else (proc.stderr or proc.stdout).strip()[:300]) or "no audio written"
            raise RenderError(f"{midi}: fluidsynth failed (exit {proc.returncode}): {why}")
        try:
            stats = midi_stats(midi)
        except RenderError as e:  # fluidsynth read what music21 cannot: check the audio only
            log.debug("%s", e)
            stats = None
        if stats is not None and stats.n_notes == 0:
            raise RenderError(f"{midi}: the MIDI file has no notes (fluidsynth rendered only silence)")
        _check_and_trim(tmp, midi, stats, min_peak=min_peak, trim_tail=trim_tail)
    return wav


def _check_and_trim(path: Path, midi: Path, stats: MidiStats | None, *, min_peak: float | None,
                    trim_tail: bool) -> None:
    """Fail a rendered WAV that stops before the MIDI's last note or is silent; then trim its silent tail."""
    import numpy as np
    import soundfile as sf

    data, sr = sf.read(str(path), dtype="int16", always_2d=True)
    seconds = len(data) / sr
    # fluidsynth renders every event and then ~3 s of tail, so anything shorter than the notes was cut off
    if stats is not None and seconds < 0.98 * stats.end_seconds - 0.05:
        raise RenderError(f"{midi}: fluidsynth stopped early: {seconds:.2f} s of audio for "
                          f"{stats.end_seconds:.2f} s of notes")
    peak = float(np.abs(data.astype(np.int32)).max()) / 32768 if len(data) else 0.0
    if min_peak is not None and peak < min_peak:
        notes = f" from {stats.n_notes} notes" if stats is not None else ""
        raise RenderError(f"{midi}: fluidsynth rendered silence (peak {peak:.1e} < {min_peak:g}){notes}")
    if trim_tail:
        _trim_tail(path, threshold=1e-3, keep_s=0.25, data=data, sr=sr)


def _trim_tail(path: Path, threshold: float, keep_s: float, data=None, sr: int | None = None) -> None:
    """Cut trailing near-silence of a WAV in place (keeps ``keep_s`` after the last loud sample).

    ``data`` ([N, C] int16) and ``sr`` may be passed when the file was already read."""
    import numpy as np
    import soundfile as sf

    if data is None:
        data, sr = sf.read(str(path), dtype="int16", always_2d=True)
    loud = np.flatnonzero(np.abs(data).max(axis=1) > threshold * 32767)
    end = len(data) if loud.size == 0 else min(len(data), int(loud[-1]) + 1 + int(keep_s * sr))
    if end < len(data):
        sf.write(str(path), data[:end], sr, subtype="PCM_16", format="WAV")


def _wav_frames(path: Path) -> int:
    import soundfile as sf

    try:
        return sf.info(str(path)).frames
    except RuntimeError:
        return 0


def abc_to_svg(tune: str, svg: str | Path, timeout: float = 60) -> Path:
    """Engrave one ABC tune as an SVG sheet with ``abcm2ps -g`` (Debian ``abcm2ps``); returns the SVG path.

    The sheet is drawn from the ABC itself (chord symbols, ornaments and repeats kept), not from MIDI. A tune that
    needs several pages keeps the first one. Raises :class:`ToolNotFoundError` when abcm2ps is missing and
    :class:`RenderError` when it writes no SVG (its last message in the error). Written atomically.
    """
    import tempfile

    svg = Path(svg)
    if not tune.strip():
        raise RenderError(f"{svg}: empty tune")
    require_tool("abcm2ps")
    with tempfile.TemporaryDirectory(prefix="abcm2ps-") as td:
        src = Path(td) / "tune.abc"
        src.write_text(tune if tune.endswith("\n") else tune + "\n")
        proc = run_tool(["abcm2ps", "-q", "-g", "-O", str(Path(td) / "sheet.svg"), str(src)], what=str(svg),
                        timeout=timeout)
        pages = sorted(Path(td).glob("sheet*.svg"))  # abcm2ps numbers the pages: sheet001.svg, ...
        if not pages or pages[0].stat().st_size == 0:
            why = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no SVG written"]
            raise RenderError(f"{svg}: abcm2ps failed (exit {proc.returncode}): {why[0]}")
        with atomic_path(svg, suffix=".svg") as tmp:
            tmp.write_bytes(pages[0].read_bytes())
    return svg
