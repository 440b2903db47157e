"""Codec speed on CPU: encode and decode real-time factor (RTF = compute seconds / audio seconds; < 1 is faster than
real time) for the tiny and the released-size X-Codec, the Vocos upsampler, and the RVQ step side by side.

The codec core IS transformers' ``XcodecModel`` (wrapped by :class:`yue.codec.XCodec`), so there is no second
full-codec implementation to race; the two places where this project has its own module beside a transformers peer
are compared directly, in the same run:

- RVQ encode: transformers ``quantizer.encode`` vs own ``yue.codec.losses.rvq_forward(training=False)``
  (the training-time quantizer), on the same embeddings (codes checked equal);
- the one-shot ``XCodec.encode`` vs chunked ``XCodec.encode_long`` (own chunking around the transformers model).

Random weights (speed does not depend on them). Usage::

    python benchmarks/codec_speed.py [--seconds 10] [--threads 2] [--skip-released]
"""

from __future__ import annotations

import argparse
import time

import torch


def _time(fn, reps: int = 2) -> float:
    fn()  # warm-up (allocations, first-call overheads)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_codec(name: str, cfg, seconds: float, reps: int) -> dict:
    from yue.codec import XCodec

    torch.manual_seed(0)
    codec = XCodec(cfg).eval()
    # transformers initialises the codebooks to zeros; give them random vectors so the nearest-code search is real
    for q in codec.model.quantizer.quantizers:
        q.codebook.embed.normal_()
    x = torch.randn(int(seconds * cfg.sample_rate)) * 0.1
    with torch.inference_mode():
        codes = codec.encode(x)
        enc = _time(lambda: codec.encode(x), reps)
        dec = _time(lambda: codec.decode(codes), reps)
        e = torch.randn(1, cfg.D + cfg.semantic.hidden_size, codes.shape[-1])
        from yue.codec.losses import rvq_forward

        ours = rvq_forward(codec.model.quantizer, e, cfg.n_q, training=False)[1]
        peer = codec.model.quantizer.encode(e, bandwidth=cfg.target_bandwidths[-1])
        assert torch.equal(ours, peer), "own RVQ and transformers RVQ disagree"
        t_peer = _time(lambda: codec.model.quantizer.encode(e, bandwidth=cfg.target_bandwidths[-1]), reps)
        t_own = _time(lambda: rvq_forward(codec.model.quantizer, e, cfg.n_q, training=False), reps)
        t_long = _time(lambda: codec.encode_long(x, chunk_s=seconds / 2, context_s=1.0), 1)
    n_params = sum(p.numel() for p in codec.parameters()) / 1e6
    return {"name": name, "params_M": n_params, "enc": enc / seconds, "dec": dec / seconds, "rvq_peer": t_peer,
            "rvq_own": t_own, "enc_long": t_long / seconds, "frames": codes.shape[-1]}  # fmt: skip


def bench_vocos(seconds: float, reps: int, small: bool) -> float:
    from yue.codec.vocos import VocosConfig, VocosDecoder

    cfg = VocosConfig(input_channels=64, dim=32, intermediate_dim=48, num_layers=2) if small else VocosConfig()
    voc = VocosDecoder(cfg).eval()
    feats = torch.randn(1, cfg.input_channels, int(seconds * 50))
    with torch.inference_mode():
        return _time(lambda: voc(feats), reps) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-released", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from yue.codec import released_config, tiny_config

    rows = [bench_codec("tiny", tiny_config(), args.seconds, args.reps)]
    if not args.skip_released:
        rows.append(bench_codec("released-size", released_config(), args.seconds, args.reps))
    print(f"CPU threads: {torch.get_num_threads()}, audio: {args.seconds:.1f} s at 16 kHz (RTF: lower is faster)")
    print(f"{'codec':>14} {'params':>8} {'encode RTF':>11} {'decode RTF':>11} {'encode_long RTF':>16} "
          f"{'RVQ transformers':>17} {'RVQ own':>9} {'own/peer':>9}")  # fmt: skip
    for r in rows:
        print(f"{r['name']:>14} {r['params_M']:7.1f}M {r['enc']:11.3f} {r['dec']:11.3f} {r['enc_long']:16.3f} "
              f"{r['rvq_peer'] * 1e3:15.1f}ms {r['rvq_own'] * 1e3:7.1f}ms {r['rvq_own'] / r['rvq_peer']:9.2f}")  # fmt: skip
    v_small = bench_vocos(args.seconds, args.reps, small=True)
    line = f"Vocos upsampler (own modules; no peer installed): tiny RTF {v_small:.3f}"
    if not args.skip_released:
        line += f", released-size RTF {bench_vocos(args.seconds, args.reps, small=False):.3f}"
    print(line)


if __name__ == "__main__":
    main()
