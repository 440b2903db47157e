"""Command line of the yue project: ``yue <subcommand> --help``.

``codec`` (encode/decode/convert the X-Codec), ``prepare`` (songs -> codes and LM token sequences), ``train`` (the
codec, or the stage-1 / stage-2 LMs: ``task: codec | stage1 | stage2``), ``generate`` (lyrics + genre -> song),
``eval`` (generated songs against references), ``demo`` (all of it on tiny models, on a CPU). The logic lives in the
library modules; this file parses arguments and calls them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("yue")

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")

EPILOG = """\
pipeline: yue codec convert (released xcodec_mini_infer) -> yue prepare (songs -> codes, stage-1/stage-2 documents)
-> yue train (task: stage1 | stage2) -> yue generate (lyrics + genre -> vocals.wav, instrumental.wav, mix.wav)
-> yue eval. Every model is a local folder; nothing is downloaded.
"""


def _setup_logging(verbose: bool = False) -> None:
    try:
        from musiccore.hf import setup_logging

        setup_logging(level=logging.DEBUG if verbose else logging.INFO)
    except ImportError:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class BatchInputError(ValueError):
    """A batch command's inputs cannot be processed as given: nothing matched, or two inputs would write the same
    output file (the message lists every colliding group)."""


def _plan_outputs(
    paths: list[str], suffixes: tuple[str, ...], out_dir: Path, out_suffix: str
) -> list[tuple[Path, Path]]:
    """``(input, output)`` pairs of a batch command, decided before any work.

    A file given directly goes to ``out_dir/<stem><out_suffix>``; a file found (recursively) in a given folder keeps
    its path relative to that folder (``songs/a/song.wav`` -> ``out_dir/a/song.npy``), so same-named files in
    different sub-folders never collide. The same file named twice is taken once. Inputs that still share an output
    (``tune.wav`` beside ``tune.flac``, or two folders holding ``x.wav``) are refused: :class:`BatchInputError`
    lists them all and nothing is written.
    """
    pairs: list[tuple[Path, Path]] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix.lower() in suffixes and q.is_file())
            items = [(q, q.relative_to(p).with_suffix(out_suffix)) for q in found]
        else:  # a missing or unreadable file is kept: the command reports it as skipped
            items = [(p, Path(p.name).with_suffix(out_suffix))]
        for src, rel in items:
            key = src.resolve()
            if key not in seen:
                seen.add(key)
                pairs.append((src, out_dir / rel))
    if not pairs:
        raise BatchInputError(f"no input files ({', '.join(suffixes)}) in {', '.join(paths)}")
    by_dst: dict[Path, list[Path]] = {}
    for src, dst in pairs:
        by_dst.setdefault(dst, []).append(src)
    clashes = {d: s for d, s in by_dst.items() if len(s) > 1}
    if clashes:
        lines = "; ".join(f"{d} <- {', '.join(map(str, s))}" for d, s in sorted(clashes.items()))
        raise BatchInputError(
            f"{len(clashes)} output name(s) would be written by several inputs ({lines}); rename or move them, or "
            "run them in separate commands (nothing was written)"
        )
    return pairs


def _report(verb: str, total: int, failed: list[tuple[Path, str]]) -> int:
    """Print the batch summary (``encoded N/M files, K failed`` + one ``skipped FILE: reason`` line each)."""
    print(f"{verb} {total - len(failed)}/{total} files" + (f", {len(failed)} failed" if failed else ""))
    for f, why in failed:
        print(f"  skipped {why}" if why.startswith(str(f)) else f"  skipped {f}: {why}")
    return 1 if failed else 0


class CodecRequiredError(ValueError):
    """A command that encodes or decodes audio was started without ``--codec`` and without ``--random-codec``."""


def _check_codec_flags(path: str | None, random_codec: bool, command: str) -> None:
    """:class:`CodecRequiredError` unless exactly one of ``--codec`` / ``--random-codec`` is given."""
    if path and random_codec:
        raise CodecRequiredError(f"{command}: give either --codec or --random-codec, not both")
    if not path and not random_codec:
        raise CodecRequiredError(
            f"{command}: no --codec given; pass --codec DIR (a converted or trained codec folder), or --random-codec "
            "to use random weights on purpose (shapes only, meaningless codes)"
        )


def _load_codec(path: str | None, preset: str, random_codec: bool = False, command: str = "this command"):
    """The codec of ``--codec``; a random-weight ``preset`` codec only when ``--random-codec`` says so explicitly
    (random codes look like data but mean nothing, so a silent fallback would fill caches with noise)."""
    from yue.codec import XCodec, released_config, tiny_config

    _check_codec_flags(path, random_codec, command)
    if path:
        return XCodec.from_pretrained(path)
    log.warning("--random-codec: using a RANDOMLY initialised %s codec (shapes only, no meaningful audio)", preset)
    return XCodec(tiny_config() if preset == "tiny" else released_config())


def _codec_info(args, codec) -> dict:
    from yue.prepare import describe_codec

    return describe_codec(codec, args.codec, args.preset)


# ---- codec ------------------------------------------------------------------------------------------------------
def cmd_codec_encode(args) -> int:
    import numpy as np

    from musiccore.audio import AudioError, load_audio
    from musiccore.runs import atomic_path
    from yue.codec import CodecInputError, prepare_waveform

    _check_codec_flags(args.codec, args.random_codec, "yue codec encode")
    out = Path(args.output)
    plan = _plan_outputs(args.inputs, AUDIO_SUFFIXES, out, ".npy")  # collisions refused before any work
    codec = _load_codec(args.codec, args.preset, args.random_codec, "yue codec encode")
    failed: list[tuple[Path, str]] = []
    for f, dst in plan:
        try:
            wav, sr = load_audio(f)
            mono = prepare_waveform(wav, sr, codec.sample_rate, where=str(f), allow_silence=args.allow_silence)
            codes = codec.encode_long(mono, args.target_bw, chunk_s=args.chunk_s).cpu().numpy().astype(np.int16)
            dst.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(dst) as tmp:  # complete files only: a failure leaves no partial .npy behind
                with open(tmp, "wb") as fh:
                    np.save(fh, codes)
        except (AudioError, CodecInputError, ValueError, OSError, RuntimeError) as e:  # skip, report, keep going
            failed.append((f, str(e)))
            log.error("skip %s: %s", f, e)
            continue
        print(f"{f} -> {dst} codes {list(codes.shape)}")
    return _report("encoded", len(plan), failed)


def cmd_codec_decode(args) -> int:
    import numpy as np
    import torch

    from musiccore.audio import AudioError, write_audio
    from yue.codec import CodecInputError
    from yue.codec_ids import CodecIdError, read_codes_npy

    _check_codec_flags(args.codec, args.random_codec, "yue codec decode")
    out = Path(args.output)
    plan = _plan_outputs(args.inputs, (".npy",), out, ".wav")  # collisions refused before any work
    codec = _load_codec(args.codec, args.preset, args.random_codec, "yue codec decode")
    upsampler = None
    if args.upsampler != "none":
        if not args.codec:
            log.error("--upsampler needs --codec (a converted folder holding %s_upsampler.safetensors)", args.upsampler)
            return 2
        from yue.codec.vocos import VocosConfig, VocosDecoder

        folder = Path(args.codec)
        upsampler = VocosDecoder(VocosConfig.from_yaml(folder / "vocos_config.yaml"))
        upsampler.load_weights(folder / f"{args.upsampler}_upsampler.safetensors").eval()
    failed: list[tuple[Path, str]] = []
    for f, dst in plan:
        try:
            codes = read_codes_npy(f, codec.n_q, codec.cfg.bins)  # [K, T]; typed error naming the file
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
            dst.parent.mkdir(parents=True, exist_ok=True)
            write_audio(dst, np.clip(wav, -0.99, 0.99), sr)  # atomic: never a half-written wav
        except (CodecIdError, CodecInputError, AudioError, ValueError, OSError, RuntimeError) as e:
            failed.append((f, str(e)))  # skip the file, report it, decode the rest
            log.error("skip %s: %s", f, e)
            continue
        print(f"{f} -> {dst} ({wav.shape[-1] / sr:.2f} s at {sr} Hz)")
    return _report("decoded", len(plan), failed)


def cmd_codec_convert(args) -> int:
    from yue.codec.convert import convert_release

    out = convert_release(args.release, args.output, allow_pickle=args.allow_pickle)
    print(f"converted {args.release} -> {out}")
    return 0


# ---- prepare ----------------------------------------------------------------------------------------------------
def cmd_prepare(args) -> int:
    from yue.prepare import prepare_folder

    codec = _load_codec(args.codec, args.preset, args.random_codec, "yue prepare")
    out = Path(args.output)
    rep = prepare_folder(out, codec, _codec_info(args, codec), args.tokenizer, split=args.split, root=args.root,
                         limit=args.limit, allow_synth=args.allow_synth, chunk_s=args.chunk_s)  # fmt: skip
    c = rep["counts"]
    print(f"prepared {c['prepared']}, already there {c['already_there']}, failed {c['failed']} -> {out} "
          f"(report: {out / 'report.json'})")  # fmt: skip
    for f in rep["failures"]:
        print(f"  failed {f['id']}: {f['reason']}")
    return 1 if rep["failures"] else 0


# ---- train ------------------------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from musiccore.config import load_config
    from yue.codec.train import CodecTrainConfig, train_codec
    from yue.lm.config import config_task

    if config_task(args.config, args.overrides) in ("stage1", "stage2"):  # the LMs (yue.lm.train)
        from yue.lm.config import LMTrainConfig
        from yue.lm.train import train

        lm_cfg = load_config(LMTrainConfig, args.config, args.overrides + (["run.fresh=true"] if args.fresh else []))
        s = train(lm_cfg)
        print(f"run folder: {s['run_dir']} (step {s['global_step']}, LM folder: {s.get('final', 'none: preempted')})")
        return 0
    cfg = load_config(CodecTrainConfig, args.config, args.overrides)
    if cfg.task != "codec":
        raise SystemExit(f"task {cfg.task!r}: only the codec can be trained in this version (task: codec)")
    run = train_codec(cfg, fresh=args.fresh)
    print(f"run folder: {run} (checkpoint: {run / 'checkpoint'})")
    return 0


def cmd_demo(args) -> int:
    from yue.demo import run_demo

    run_demo(steps=args.steps, codec_dir=args.codec, out_dir=args.output, seconds=args.seconds, lm_steps=args.lm_steps,
             sections=args.sections, section_tokens=args.section_tokens, max_songs=args.max_songs)  # fmt: skip
    return 0


# ---- eval -------------------------------------------------------------------------------------------------------
def cmd_eval(args) -> int:
    from yue.evaluate import EvalConfig, evaluate

    cfg = EvalConfig(layer=args.layer, window_s=args.window_s, batch_size=args.batch_size, device=args.device,
                     normalize=args.normalize, vocal_voiced_ratio=args.vocal_threshold,
                     tokenizer=args.tokenizer)  # fmt: skip
    out = Path(args.out) if args.out else Path(args.generated) / "eval"
    rep = evaluate(args.generated, args.reference, args.embedder, cfg, out_dir=out)
    sm, fr = rep["summary"], rep["frechet"]
    if fr is not None:
        print(f"Fréchet distance: {'n/a' if fr['value'] is None else format(fr['value'], '.4g')} "
              f"({fr['n_generated']} generated vs {fr['n_reference']} reference songs)")  # fmt: skip
    print(f"songs {sm['songs']} evaluated, {sm['skipped']} skipped; sections {sm['sections_present']}/"
          f"{sm['sections_requested']}; codes ok in {sm['songs_codes_ok']}/{sm['songs']} songs -> "
          f"{out / 'eval.md'}, {out / 'eval.json'}")  # fmt: skip
    for x in rep["skipped"]:
        print(f"  skipped {x['path']}: {x['reason']}")
    return 1 if rep["skipped"] or rep["reference_skipped"] else 0


def _add_eval_parser(sub) -> None:
    ev = sub.add_parser(
        "eval",
        help="evaluate generated songs: Fréchet distance, sections, vocal presence, codes -> eval.md + eval.json",
        description="Evaluate a folder of generated song folders (or one song folder). Structural checks always; "
        "with --reference and --embedder also the Fréchet distance between song embeddings (mean-pooled frame "
        "features of a local transformers.HubertModel folder, e.g. one written by `mert export-hf`). Bad song "
        "folders are skipped and listed (exit code 1).",
    )
    ev.add_argument("generated", help="folder of generated song folders (each with song.json), or one song folder")
    ev.add_argument("--reference", default=None, help="folder of reference audio (recursive) or of song folders")
    ev.add_argument("--embedder", default=None, help="local transformers.HubertModel folder (config.json + weights)")
    ev.add_argument("--layer", default="-1",
                    help="hidden state to pool: index (0 = encoder input, -1 = last) or 'mean'")  # fmt: skip
    ev.add_argument("--window-s", type=float, default=10.0, help="audio per embedder forward pass (s)")
    ev.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--normalize", action="store_true", default=None,
                    help="zero-mean/unit-variance per window (default: preprocessor_config.json)")  # fmt: skip
    ev.add_argument("--vocal-threshold", type=float, default=0.2,
                    help="a section has vocals when this fraction of its frames is voiced (pYIN)")  # fmt: skip
    ev.add_argument("--tokenizer", default=None,
                    help="tokenizer.model that reads stage1_ids.npy (default: the one song.json names, else the "
                    "released one)")  # fmt: skip
    ev.add_argument("--out", default=None, help="report folder (default GENERATED/eval)")
    ev.set_defaults(func=cmd_eval)


# ---- generate ---------------------------------------------------------------------------------------------------
def cmd_generate(args) -> int:
    from yue.generate import GenerateInputError, SongRequest, generate_batch, generate_song, load_generate_config
    from yue.generate.request import AudioPrompt

    ov = list(args.overrides)
    for key in ("stage1", "stage2", "codec", "upsampler", "tokenizer"):
        if getattr(args, key) is not None:
            ov.append(f"models.{key}={getattr(args, key)}")
    if args.strict_tags:
        ov.append("unknown_tags=error")
    if args.device:
        ov.append(f"device={args.device}")
    cfg = load_generate_config(args.config, ov)
    if args.batch:
        try:
            i, n = (int(x) for x in args.shard.split("/"))
        except ValueError:
            raise GenerateInputError(f"--shard {args.shard!r}: expected i/n, e.g. 0/4") from None
        rep = generate_batch(args.batch, args.out, cfg, shard=(i, n))
        print(f"generated {len(rep['done'])}, already there {len(rep['skipped'])}, failed {len(rep['failed'])} "
              f"-> {args.out}")  # fmt: skip
        for name, why in rep["failed"]:
            print(f"  failed {name}: {why}")
        return 1 if rep["failed"] else 0
    if args.genre is None or args.lyrics is None:
        raise GenerateInputError("--genre and --lyrics are required (or --batch requests.jsonl)")
    prompt = None
    if args.audio_prompt or args.vocal_prompt or args.instrumental_prompt:
        if args.audio_prompt and (args.vocal_prompt or args.instrumental_prompt):
            raise GenerateInputError("give --audio-prompt OR --vocal-prompt with --instrumental-prompt, not both")
        if not args.audio_prompt and not (args.vocal_prompt and args.instrumental_prompt):
            raise GenerateInputError("a dual-track prompt needs both --vocal-prompt and --instrumental-prompt")
        paths = [args.audio_prompt] if args.audio_prompt else [args.vocal_prompt, args.instrumental_prompt]
        prompt = AudioPrompt(paths, args.prompt_start, args.prompt_end)
    req = SongRequest(args.genre, args.lyrics, args.sections, prompt, args.tracks, args.seed)
    song = generate_song(req, args.out, cfg)
    t = song["timings"]
    print(f"{args.out}: {len(song['sections'])} sections, {song['sections'][-1]['end_s']:.1f} s at "
          f"{song['sample_rate']} Hz (stage1 {t['stage1_s']:.1f} s, stage2 {t['stage2_s']:.1f} s, "
          f"decode {t['decode_s']:.1f} s)")  # fmt: skip
    return 0


def _add_generate_parser(sub) -> None:
    g = sub.add_parser(
        "generate",
        help="lyrics + genre -> song (stage 1, stage 2, codec, upsamplers): vocals/instrumental/mix wav + song.json",
        description="Generate a song from local model folders (nothing is downloaded). Settings come from --config "
        "(a YAML of yue.generate.GenerateConfig) and key=value overrides; the folder flags override models.*. "
        "Rerunning into the same --out resumes an interrupted run. --batch runs a jsonl of requests "
        "({genre, lyrics, n_sections, audio_prompt: {paths, start, end}, tracks, seed, id}), one folder each.",
    )
    g.add_argument("--genre", help="tags (space-separated, see top_200_tags.json) or a file holding them")
    g.add_argument("--lyrics", help="lyrics file with [verse]/[chorus]/... labels (or the text itself)")
    g.add_argument("--audio-prompt", help="ICL reference (single track: mix or one stem); needs an -icl stage 1")
    g.add_argument("--vocal-prompt", help="dual-track ICL reference: vocal stem (with --instrumental-prompt)")
    g.add_argument("--instrumental-prompt", help="dual-track ICL reference: instrumental stem")
    g.add_argument("--prompt-start", type=float, default=0.0, help="prompt window start (s)")
    g.add_argument("--prompt-end", type=float, default=30.0, help="prompt window end (s)")
    g.add_argument("--sections", type=int, default=None, help="generate the first N sections (default: all)")
    g.add_argument("--tracks", choices=["both", "instrumental", "vocal"], default="both",
                   help="instrumental: vocal positions forced to silence, no vocal files; vocal: the reverse")  # fmt: skip
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--out", required=True, help="output folder (batch: one sub-folder per request)")
    g.add_argument("--config", default=None, help="YAML of generation settings (see configs/generate_tiny.yaml)")
    g.add_argument("--stage1", default=None, help="stage-1 LM folder")
    g.add_argument("--stage2", default=None, help="stage-2 LM folder")
    g.add_argument("--codec", default=None, help="converted codec folder")
    g.add_argument("--upsampler", default=None, help="folder with the Vocos upsamplers (44.1 kHz); default: 16 kHz")
    g.add_argument("--tokenizer", default=None, help="tokenizer.model (default: the stage-1 folder's, else released)")
    g.add_argument("--device", default=None, help="auto | cpu | cuda[:i]")
    g.add_argument("--strict-tags", action="store_true", help="unknown tag words are an error (default: a warning)")
    g.add_argument("--batch", default=None, help="jsonl of requests (one folder each under --out)")
    g.add_argument("--shard", default="0/1", help="i/n: this job takes rows i, i+n, ... (Slurm arrays)")
    g.add_argument("overrides", nargs="*", help="key=value settings, e.g. stage1.max_new_tokens=600")
    g.set_defaults(func=cmd_generate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yue",
        description="YuE: lyrics-to-song with two LMs over X-Codec tokens.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", metavar="{codec,prepare,train,demo,eval,generate}")

    codec = sub.add_parser("codec", help="X-Codec: encode audio to codes, decode codes, convert released weights")
    csub = codec.add_subparsers(dest="codec_command", metavar="{encode,decode,convert}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--codec", help="converted codec folder (yue codec convert / a training checkpoint)")
    common.add_argument("--preset", choices=["tiny", "released"], default="tiny",
                        help="shape of the --random-codec codec")  # fmt: skip
    common.add_argument("--random-codec", action="store_true",
                        help="use a randomly initialised --preset codec instead of --codec (shapes only; the codes "
                        "mean nothing). Without --codec this flag is required.")  # fmt: skip
    enc = csub.add_parser("encode", parents=[common], help="audio files/folders -> <stem>.npy codes [K, T] (int16)",
                          description="Encode audio files (and folders, recursively) to codes. A folder's files keep "
                          "their relative paths under --output (a/song.wav -> OUT/a/song.npy); inputs that would still "
                          "share an output name (tune.wav beside tune.flac) are refused before any work. Bad files "
                          "are skipped and listed (exit 1).")  # fmt: skip
    enc.add_argument("inputs", nargs="+", help="audio files or folders (wav/flac/mp3/ogg; any rate, any channels)")
    enc.add_argument("-o", "--output", required=True, help="output folder")
    enc.add_argument("--target-bw", type=float, default=None, help="kbps: 0.5 = codebook 0 only, 4 = 8 codebooks")
    enc.add_argument("--chunk-s", type=float, default=30.0, help="chunk length for long audio (s)")
    enc.add_argument("--allow-silence", action="store_true", help="encode silent files instead of rejecting them")
    enc.set_defaults(func=cmd_codec_encode)
    dec = csub.add_parser("decode", parents=[common], help=".npy codes files/folders -> wav",
                          description="Decode [K, T] (or [1, K, T]) integer .npy code files (and folders, "
                          "recursively) to wav, keeping relative paths under --output; colliding output names are "
                          "refused before any work. Bad files (empty, corrupt, fractional or out-of-range codes, "
                          "several clips) are skipped and listed, the rest decoded (exit 1).")  # fmt: skip
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
    prep.add_argument("--root", default=None,
                      help="data-kit root (default: musiccore.runs.data_dir(): $MUSIC_DATA_DIR, else the checkout's "
                      "data/kit where `make data` builds it)")  # fmt: skip
    prep.add_argument("--split", default=None)
    prep.add_argument("--limit", type=int, default=None)
    prep.add_argument("--tokenizer", default=None,
                      help="tokenizer.model path, or 'tiny' (trained on the songs, written to OUTPUT/tokenizer/; "
                      "default: the released one)")  # fmt: skip
    prep.add_argument("--chunk-s", type=float, default=30.0)
    prep.add_argument("--allow-synth", action="store_true", help="use synthesized songs when the kit has none")
    prep.set_defaults(func=cmd_prepare)

    tr = sub.add_parser(
        "train",
        help="train the codec (task: codec) or the stage-1 / stage-2 LMs (task: stage1 | stage2)",
        description="Train the X-Codec (task: codec; configs/tiny.yaml on a CPU, configs/xcodec.yaml at released size) "
        "or the stage-1 / stage-2 LM stages on a `yue prepare` folder (task: stage1 | stage2; configs/tiny_stage1.yaml, tiny_stage2.yaml on "
        "a CPU; stage1_7b.yaml, stage1_7b_lora.yaml, stage2_1b.yaml on GPUs). Relaunching the same command resumes "
        "from the run folder's newest checkpoint.",
    )
    tr.add_argument("--config", required=True)
    tr.add_argument("--fresh", action="store_true", help="clear the run folder instead of resuming")
    tr.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=20")
    tr.set_defaults(func=cmd_train)

    demo = sub.add_parser("demo", help="the whole path on tiny models: codec, prepare, stage-1/2 LMs, generate a "
                          "song, eval (a few minutes, CPU)")  # fmt: skip
    demo.add_argument("--steps", type=int, default=300, help="codec training steps when no --codec is given (before ~250 "
                      "steps dead codes are not restarted yet and codebook 0 uses only a few codes)")
    demo.add_argument("--codec", default=None, help="use this trained codec instead of training one")
    demo.add_argument("--seconds", type=float, default=8.0, help="length of the excerpt the codec reconstructs")
    demo.add_argument("--lm-steps", type=int, default=40, help="training steps of each tiny LM")
    demo.add_argument("--sections", type=int, default=2, help="sections of the generated song")
    demo.add_argument("--section-tokens", type=int, default=400, help="stage-1 ids per section at most (100 = 1 s)")
    demo.add_argument("--max-songs", type=int, default=16, help="training songs to prepare at most")
    demo.add_argument("-o", "--output", default=None, help="output folder (default $MUSIC_RUNS_DIR/yue-demo)")
    demo.set_defaults(func=cmd_demo)
    _add_eval_parser(sub)
    _add_generate_parser(sub)
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
