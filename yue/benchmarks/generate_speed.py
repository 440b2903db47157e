"""Generation speed: our pipeline vs a faithful re-implementation of upstream's algorithm, same weights, one process.

Both run on the same random LMs (``yue.lm.build_lm``), greedy, with the same logits masks (stage 2 uses upstream's
joint codebook 1..7 range in both), and must emit identical tokens (asserted):

- stage 1, upstream: one HF ``generate`` per section on the whole re-prefilled history, ``guidance_scale`` (HF's
  unbatched CFG = a second forward per step); ours: one KV cache across sections, CFG as one batch of two;
- stage 2, upstream: one ``generate(7 new tokens)`` per frame on the whole re-encoded prompt, batches of 4 full 6 s
  chunks per track, the tail chunk alone; ours: every chunk of both tracks in one batch, prefilled once, KV-cached.

``--memory`` also measures the peak memory of our stage 2 against the song length (fresh process per length: peak
RSS growth on CPU, ``torch.cuda.max_memory_allocated`` on GPU) with the batch capped (``--memory-batch``) and
uncapped, to show that memory follows the batch in flight, not the song.

    python benchmarks/generate_speed.py                                   # tiny shapes, CPU, 1 thread (minutes)
    python benchmarks/generate_speed.py --stage1-shape stage1_7b --stage2-shape stage2_1b --tokenizer released \\
        --device cuda --dtype bf16 --section-tokens 3000                  # released shapes on a GPU
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time

import numpy as np
import torch

LYRICS = ("[verse]\nla la la the night is long\n\n[chorus]\nsing with me under the silver moon\n\n"
          "[verse]\nhold on hold on we will find the way\n\n[outro]\nthe road goes on\n\n[bridge]\nla la\n\n"
          "[chorus]\nsing with me\n")  # fmt: skip
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _tokenizer(name: str):
    from yue.tokenizer import YuETokenizer, find_released_tokenizer, train_tiny_tokenizer

    if name == "released":
        p = find_released_tokenizer()
        if p is None:
            raise SystemExit("released tokenizer not found ($YUE_TOKENIZER)")
        return YuETokenizer(p)
    return YuETokenizer(train_tiny_tokenizer(tempfile.mkdtemp(prefix="yue-bench-tok-")))


def _model(shape: str, layout, seed: int, device: str, dtype: str):
    from yue.lm import build_lm

    return build_lm(shape, layout, seed=seed).to(device=device, dtype=DTYPES[dtype]).eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device):
    """``(result, seconds)``: wall seconds on a GPU; on a CPU this process's CPU seconds (1 thread), which other
    jobs on a shared machine do not inflate the way they inflate wall time."""
    _sync(device)
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    _sync(device)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return out, (wall if device.startswith("cuda") else cpu)


def _memory_child(args, n_chunks: int, batch: int, q) -> None:
    """Fresh process: stage 2 over ``n_chunks`` chunks per track; report the peak memory growth and KV cache (MB)."""
    import resource

    from yue.generate.config import Stage2Settings
    from yue.generate.stage2 import run_stage2

    torch.set_num_threads(args.threads)
    tok = _tokenizer(args.tokenizer)
    m2 = _model(args.stage2_shape, tok.layout, 1, args.device, args.dtype)
    rng = np.random.RandomState(0)
    frames = n_chunks * args.chunk_frames
    tracks = [rng.randint(0, 1024, frames), rng.randint(0, 1024, frames)]
    st = Stage2Settings(codebook_mask=True, chunk_frames=args.chunk_frames, batch_chunks=batch)
    stats: dict = {}
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run_stage2(m2, tok.layout, tracks, st, stats=stats)
        q.put(((torch.cuda.max_memory_allocated() - base) / 2**20, stats["peak_kv_bytes"] / 2**20))
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run_stage2(m2, tok.layout, tracks, st, stats=stats)
        q.put(((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, stats["peak_kv_bytes"] / 2**20))


def memory_table(args) -> None:
    ctx = mp.get_context("spawn")
    print(f"\nstage-2 peak memory growth (MB) vs song length ({args.chunk_frames}-frame chunks, 2 tracks; "
          f"{'CUDA max_memory_allocated' if args.device.startswith('cuda') else 'peak RSS growth of a fresh process'})")  # fmt: skip
    print("(each cell: peak growth MB / largest KV cache of a batch MB)")
    print(f"| chunks per track | song s | batch <= {args.memory_batch} chunks | all chunks in one batch |")
    print("|---|---|---|---|")
    for n in args.memory_lengths:
        row = []
        for batch in (args.memory_batch, 0):
            q = ctx.Queue()
            p = ctx.Process(target=_memory_child, args=(args, n, batch, q))
            p.start()
            row.append(q.get())
            p.join()
        cells = " | ".join(f"{a:.1f} / {b:.1f}" for a, b in row)
        print(f"| {n} | {n * args.chunk_frames / 50:.0f} | {cells} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage1-shape", default="tiny_stage1", help="yue.lm.PRESETS name (stage1_7b on a GPU)")
    ap.add_argument("--stage2-shape", default="tiny_stage2", help="yue.lm.PRESETS name (stage2_1b on a GPU)")
    ap.add_argument("--tokenizer", default="tiny", choices=["tiny", "released"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sections", type=int, default=4)
    ap.add_argument("--section-tokens", type=int, default=200,
                    help="stage-1 ids per section (min = max new tokens, so both runs make the same length; 2 per frame)")  # fmt: skip
    ap.add_argument("--chunk-frames", type=int, default=300, help="stage-2 chunk (300 = 6 s, as released)")
    ap.add_argument("--stage2-seconds", type=float, default=None,
                    help="stage-2 input length (default: the stage-1 song); longer inputs tile the stage-1 codes")  # fmt: skip
    ap.add_argument("--memory", action="store_true", help="also measure stage-2 peak memory vs song length")
    ap.add_argument("--memory-lengths", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    ap.add_argument("--memory-batch", type=int, default=2)
    ap.add_argument("--memory-only", action="store_true", help="skip the speed comparison")
    ap.add_argument("--skip-stage2", action="store_true", help="compare stage 1 only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_only:
        print(f"load average {os.getloadavg()[0]:.2f}")
        memory_table(args)
        return

    from yue.generate.config import Stage1Settings, Stage2Settings
    from yue.generate.stage1 import Stage1Plan, run_stage1
    from yue.generate.stage2 import run_stage2
    from yue.generate.upstream import upstream_stage1, upstream_stage2
    from yue.lyrics import split_lyrics
    from yue.sequences import MARKERS, head_text, stage1_section_prompt

    tok = _tokenizer(args.tokenizer)
    layout = tok.layout
    m1 = _model(args.stage1_shape, layout, 0, args.device, args.dtype)
    m2 = _model(args.stage2_shape, layout, 1, args.device, args.dtype)
    secs = split_lyrics(LYRICS)[: args.sections]
    plan = Stage1Plan(tok.tokenize(head_text("pop female uplifting", secs)),
                      [stage1_section_prompt(tok, s, True) for s in secs], tok.tokenize(MARKERS["end_of_segment"]),
                      tok.id("<EOA>"))  # fmt: skip
    st1 = Stage1Settings(greedy=True, min_new_tokens=args.section_tokens, max_new_tokens=args.section_tokens)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; device {args.device} {args.dtype}, "
          f"{args.threads} thread(s); stage 1 {args.stage1_shape}, stage 2 {args.stage2_shape}, vocab "
          f"{m1.config.vocab_size}; {len(secs)} sections x {args.section_tokens} ids (CFG 1.5/1.2, rep. penalty 1.1)")  # fmt: skip

    clock = "wall s" if args.device.startswith("cuda") else "CPU s"
    # warm-up of both pipelines on a 1-section, 4-id plan: one-time costs (first kernels, allocator) stay out of both
    warm = Stage1Plan(plan.head, plan.prompts[:1], plan.end_of_segment, plan.eoa)
    st_warm = Stage1Settings(greedy=True, min_new_tokens=4, max_new_tokens=4)
    run_stage1(m1, layout, warm, st_warm), upstream_stage1(m1, layout, warm, st_warm)
    ours1, t_ours1 = _timed(lambda: run_stage1(m1, layout, plan, st1), args.device)
    up1, t_up1 = _timed(lambda: upstream_stage1(m1, layout, plan, st1), args.device)
    assert ours1.sections == up1, "stage 1: the pipelines emitted different tokens"
    xc = layout.xcodec
    body = [np.asarray(s[:-1]) - xc.offset(0) for s in ours1.sections]
    tracks = [np.concatenate([b[0::2] for b in body]), np.concatenate([b[1::2] for b in body])]
    if args.stage2_seconds:
        n = int(args.stage2_seconds * 50)
        tracks = [np.resize(t, n) for t in tracks]
    song_s = tracks[0].shape[0] / 50
    n_chunks = sum(-(-t.shape[0] // args.chunk_frames) for t in tracks)
    print(f"stage-1 song {sum(len(b) for b in body) // 2 / 50:.1f} s; stage-2 input {song_s:.1f} s per track "
          f"({n_chunks} chunks of <= {args.chunk_frames} frames)")
    print(f"| stage | upstream algorithm {clock} | ours {clock} | speed-up | tokens identical |")
    print("|---|---|---|---|---|")
    print(f"| stage 1 | {t_up1:.1f} | {t_ours1:.1f} | {t_up1 / t_ours1:.1f}x | yes (asserted) |", flush=True)
    if not args.skip_stage2:
        st2 = Stage2Settings(codebook_mask=False, chunk_frames=args.chunk_frames)  # upstream's joint range in both
        ours2, t_ours2 = _timed(lambda: run_stage2(m2, layout, tracks, st2)[0], args.device)
        up2, t_up2 = _timed(lambda: [upstream_stage2(m2, layout, t, 4, args.chunk_frames) for t in tracks], args.device)
        assert all(np.array_equal(a, b) for a, b in zip(ours2, up2)), "stage 2: the pipelines emitted different codes"
        print(f"| stage 2 | {t_up2:.1f} | {t_ours2:.1f} | {t_up2 / t_ours2:.1f}x | yes (asserted) |")
        tot_up, tot_ours = t_up1 + t_up2, t_ours1 + t_ours2
        print(f"| total | {tot_up:.1f} | {tot_ours:.1f} | {tot_up / tot_ours:.1f}x | |")
        print(f"stage 2 per 30 s of audio: upstream {t_up2 * 30 / song_s:.1f} {clock}, ours {t_ours2 * 30 / song_s:.1f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.memory:
        memory_table(args)


if __name__ == "__main__":
    main()
