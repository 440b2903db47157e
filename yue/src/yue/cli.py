"""Command line of the yue project: ``yue <subcommand> --help``.

What exists now: the X-Codec and its token layout (``codec``, ``prepare``, codec training in ``train``, ``demo``).
The stage-1 / stage-2 LMs (training and ``generate``/``eval``) come with a later issue.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("yue")

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")

EPILOG = """\
status: the codec (X-Codec via transformers XcodecModel, converter from the released xcodec_mini_infer files, Vocos
upsamplers), the codec-id layout, the tokenizer and the stage-1/stage-2 sequence builders exist. `yue train` trains
the codec (configs/tiny.yaml on a CPU); training the stage-1/stage-2 LMs and `generate`/`eval` are not part of this
version yet.
"""


def _setup_logging(verbose: bool = False) -> None:
    try:
        from musiccore.hf import setup_logging

        setup_logging(level=logging.DEBUG if verbose else logging.INFO)
    except ImportError:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _inputs(paths: list[str], suffixes: tuple[str, ...]) -> list[Path]:
    """Files given directly, plus the matching files inside given folders (sorted, recursive)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in suffixes)
        else:
            out.append(p)
    return out


def _load_codec(path: str | None, preset: str):
    from yue.codec import XCodec, released_config, tiny_config

    if path:
        return XCodec.from_pretrained(path)
    log.warning("no --codec given: using a RANDOMLY initialised %s codec (shapes only, no meaningful audio)", preset)
    return XCodec(tiny_config() if preset == "tiny" else released_config())


# ---- codec ------------------------------------------------------------------------------------------------------
def cmd_codec_encode(args) -> int:
    import numpy as np

    from musiccore.audio import AudioError, load_audio
    from musiccore.runs import atomic_path
    from yue.codec import CodecInputError, prepare_waveform

    codec = _load_codec(args.codec, args.preset)
    files = _inputs(args.inputs, AUDIO_SUFFIXES)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for f in files:
        try:
            wav, sr = load_audio(f)
            mono = prepare_waveform(wav, sr, codec.sample_rate, where=str(f), allow_silence=args.allow_silence)
            codes = codec.encode_long(mono, args.target_bw, chunk_s=args.chunk_s).cpu().numpy().astype(np.int16)
        except (AudioError, CodecInputError, OSError) as e:
            failed += 1
            log.error("skip %s: %s", f, e)
            continue
        dst = out / (f.stem + ".npy")
        with atomic_path(dst) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, codes)
        print(f"{f} -> {dst} codes {list(codes.shape)}")
    print(f"encoded {len(files) - failed}/{len(files)} files" + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0


def cmd_codec_decode(args) -> int:
    import numpy as np
    import torch

    from musiccore.audio import write_audio
    from yue.codec import CodecInputError

    codec = _load_codec(args.codec, args.preset)
    upsampler = None
    if args.upsampler != "none":
        if not args.codec:
            log.error("--upsampler needs --codec (a converted folder holding %s_upsampler.safetensors)", args.upsampler)
            return 2
        from yue.codec.vocos import VocosConfig, VocosDecoder

        folder = Path(args.codec)
        upsampler = VocosDecoder(VocosConfig.from_yaml(folder / "vocos_config.yaml"))
        upsampler.load_weights(folder / f"{args.upsampler}_upsampler.safetensors").eval()
    files = _inputs(args.inputs, (".npy",))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for f in files:
        try:
            codes = np.load(f, allow_pickle=False)
            with torch.no_grad():
                if upsampler is None:
                    wav, sr = codec.decode(codes)[0].cpu().numpy(), codec.sample_rate
                else:
                    wav = upsampler(codec.get_embed(codes)).cpu().numpy()
                    sr = upsampler.sample_rate
                    if args.postprocess:
                        from yue.codec.postprocess import replace_low_freq_with_energy_matched

                        low = codec.decode(codes)[0].cpu().numpy()
                        wav = replace_low_freq_with_energy_matched(low, codec.sample_rate, wav, sr)
        except (CodecInputError, ValueError, OSError) as e:
            failed += 1
            log.error("skip %s: %s", f, e)
            continue
        dst = out / (f.stem + ".wav")
        write_audio(dst, np.clip(wav, -0.99, 0.99), sr)
        print(f"{f} -> {dst} ({wav.shape[-1] / sr:.2f} s at {sr} Hz)")
    print(f"decoded {len(files) - failed}/{len(files)} files" + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0


def cmd_codec_convert(args) -> int:
    from yue.codec.convert import convert_release

    out = convert_release(args.release, args.output, allow_pickle=args.allow_pickle)
    print(f"converted {args.release} -> {out}")
    return 0


# ---- prepare ----------------------------------------------------------------------------------------------------
def _tokenizer(path: str | None, songs=None, workdir: Path | None = None):
    from yue.tokenizer import YuETokenizer, find_released_tokenizer, train_tiny_tokenizer

    if path == "tiny":
        texts = [s.lyrics for s in songs or []] + [s.tags for s in songs or []]
        return YuETokenizer(train_tiny_tokenizer(workdir / "tiny_tokenizer", texts))
    p = path or find_released_tokenizer()
    if p is None:
        raise SystemExit("no tokenizer: pass --tokenizer PATH (or 'tiny'), or set $YUE_TOKENIZER")
    return YuETokenizer(p)


def cmd_prepare(args) -> int:
    from yue.prepare import prepare_songs
    from yue.songs import load_songs

    songs = load_songs(args.split, args.root, args.limit, allow_synth=args.allow_synth)
    codec = _load_codec(args.codec, args.preset)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(args.tokenizer, songs, out)
    rep = prepare_songs(songs, codec, tok, out, chunk_s=args.chunk_s)
    print(f"prepared {len(rep['done'])}, already there {len(rep['skipped'])}, failed {len(rep['failed'])} -> {out}")
    for sid, why in rep["failed"]:
        print(f"  failed {sid}: {why}")
    return 1 if rep["failed"] else 0


# ---- train ------------------------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from musiccore.config import load_config
    from yue.codec.train import CodecTrainConfig, train_codec

    cfg = load_config(CodecTrainConfig, args.config, args.overrides)
    if cfg.task != "codec":
        raise SystemExit(f"task {cfg.task!r}: only the codec can be trained in this version (task: codec)")
    run = train_codec(cfg, fresh=args.fresh)
    print(f"run folder: {run} (checkpoint: {run / 'checkpoint'})")
    return 0


def cmd_demo(args) -> int:
    from yue.demo import run_demo

    run_demo(steps=args.steps, codec_dir=args.codec, out_dir=args.output, seconds=args.seconds)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yue",
        description="YuE: lyrics-to-song with two LMs over X-Codec tokens.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", metavar="{codec,prepare,train,demo}")

    codec = sub.add_parser("codec", help="X-Codec: encode audio to codes, decode codes, convert released weights")
    csub = codec.add_subparsers(dest="codec_command", metavar="{encode,decode,convert}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--codec", help="converted codec folder (yue codec convert / a training checkpoint)")
    common.add_argument("--preset", choices=["tiny", "released"], default="tiny",
                        help="random-weight codec when --codec is not given (shapes only)")  # fmt: skip
    enc = csub.add_parser("encode", parents=[common], help="audio files/folders -> <stem>.npy codes [K, T] (int16)")
    enc.add_argument("inputs", nargs="+", help="audio files or folders (wav/flac/mp3/ogg; any rate, any channels)")
    enc.add_argument("-o", "--output", required=True, help="output folder")
    enc.add_argument("--target-bw", type=float, default=None, help="kbps: 0.5 = codebook 0 only, 4 = 8 codebooks")
    enc.add_argument("--chunk-s", type=float, default=30.0, help="chunk length for long audio (s)")
    enc.add_argument("--allow-silence", action="store_true", help="encode silent files instead of rejecting them")
    enc.set_defaults(func=cmd_codec_encode)
    dec = csub.add_parser("decode", parents=[common], help=".npy codes files/folders -> wav")
    dec.add_argument("inputs", nargs="+")
    dec.add_argument("-o", "--output", required=True)
    dec.add_argument("--upsampler", choices=["none", "vocal", "inst"], default="none",
                     help="44.1 kHz Vocos upsampler of the converted folder (vocal or instrumental track)")  # fmt: skip
    dec.add_argument("--postprocess", action="store_true",
                     help="with --upsampler: replace the low band by the energy-matched 16 kHz decode")  # fmt: skip
    dec.set_defaults(func=cmd_codec_decode)
    conv = csub.add_parser("convert", help="released xcodec_mini_infer folder -> safetensors folder")
    conv.add_argument("release", help="folder with final_ckpt/, semantic_ckpts/, decoders/")
    conv.add_argument("-o", "--output", required=True)
    conv.add_argument("--allow-pickle", action="store_true",
                      help="allow the legacy (code-executing) pickle loader; only for trusted files")  # fmt: skip
    conv.set_defaults(func=cmd_codec_convert)

    prep = sub.add_parser("prepare", parents=[common],
                          help="data-kit songs -> codec tokens + stage-1/stage-2 token sequences cache")  # fmt: skip
    prep.add_argument("-o", "--output", required=True)
    prep.add_argument("--root", default=None, help="data-kit root (default $MUSIC_DATA_DIR)")
    prep.add_argument("--split", default=None)
    prep.add_argument("--limit", type=int, default=None)
    prep.add_argument("--tokenizer", default=None, help="tokenizer.model path, or 'tiny' (default: released one)")
    prep.add_argument("--chunk-s", type=float, default=30.0)
    prep.add_argument("--allow-synth", action="store_true", help="use synthesized songs when the kit has none")
    prep.set_defaults(func=cmd_prepare)

    tr = sub.add_parser(
        "train",
        help="train the codec (configs/tiny.yaml); LM stages: not in this version",
        description="Train the X-Codec (task: codec; configs/tiny.yaml on a CPU, configs/xcodec.yaml at released size). "
        "Relaunching the same command resumes from <run_dir>/checkpoint. Training the stage-1/stage-2 LM stages "
        "is not in this version (a later issue).",
    )
    tr.add_argument("--config", required=True)
    tr.add_argument("--fresh", action="store_true", help="clear the run folder instead of resuming")
    tr.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=20")
    tr.set_defaults(func=cmd_train)

    demo = sub.add_parser("demo", help="tiny codec + tokenizer end to end on a data-kit song (a few minutes, CPU)")
    demo.add_argument("--steps", type=int, default=100, help="codec training steps when no --codec is given")
    demo.add_argument("--codec", default=None, help="use this trained codec instead of training one")
    demo.add_argument("--seconds", type=float, default=8.0, help="length of the song excerpt")
    demo.add_argument("-o", "--output", default=None, help="output folder (default $MUSIC_RUNS_DIR/yue-demo)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "codec" and getattr(args, "codec_command", None) is None:
        parser.parse_args(["codec", "--help"])
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # typed errors carry the file and the reason
        log.error("%s: %s", type(e).__name__, e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
