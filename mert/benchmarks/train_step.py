"""Throughput of one MERT pretraining update, of the data pipeline and of the CQT teacher, side by side.

    python benchmarks/train_step.py              # CPU (add --device cuda on a GPU machine)
    python benchmarks/train_step.py --quick      # fewer repeats

Prints, in one run:
1. forward + backward (full MERT loss: masked CE over codebooks, features penalty, CQT head) in audio-seconds per
   second for the tiny model and for the 95M-shaped model (MERT-v1-95M sizes, 8 EnCodec codebooks);
2. the data pipeline (read a random 5 s window, crop to the shortest, collate, labels from the cache) in
   audio-seconds per second, and its ratio to each model's step rate (target: >= 5x);
3. the CQT target of the same batch with nnAudio on the training device vs librosa on the CPU (spec parameters:
   336 bins, 48 per octave, hop 320), with the agreement of their normalised spectra.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def timed(fn, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def step_rate(cfg, batch: int, seconds: float, device: str, repeats: int) -> tuple[float, float]:
    """(audio-seconds per second of forward+backward with the MERT loss, seconds per step)."""
    from mert.loss import compute_span_mask, mert_loss
    from mert.modeling_mert import MERTForPretraining

    torch.manual_seed(0)
    model = MERTForPretraining(cfg).to(device).train()
    n = int(seconds * cfg.sample_rate) // 320 * 320
    wav = torch.randn(batch, n, device=device) * 0.1
    t = cfg.num_frames(n)
    labels = torch.randint(0, cfg.codebook_size, (batch, cfg.num_codebooks, t), device=device)
    cqt = torch.rand(batch, t, cfg.cqt_bins, device=device)
    rng = np.random.default_rng(0)

    def step():
        mask = torch.from_numpy(compute_span_mask(batch, t, cfg.mask_prob, cfg.mask_length, cfg.mask_min_masks, rng)).to(device)
        out = model(wav, mask_time_indices=mask)
        res = mert_loss(out.projections.reshape(batch, t, -1), list(out.label_embeddings), labels, mask,
                        out.features_pen, out.cqt_pred[mask], cqt[mask])
        res.loss.backward()
        model.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    sec = timed(step, repeats)
    return batch * n / cfg.sample_rate / sec, sec


def data_rate(tmp: Path, seconds_per_batch: float, repeats: int) -> float:
    """Audio-seconds per second delivered by PretrainDataset + Collater + SecondsBatchSampler (1 process)."""
    from conftest import write_clips
    from mert.data import Collater, LabelStore, PretrainDataset, SecondsBatchSampler, write_label_shard
    from mert.prepare import write_teacher_meta

    rows = write_clips(tmp / "clips", 24, 10.0, seed=0)
    labs = [np.zeros((8, r["frames"] // 320 + 1), np.int64) for r in rows]
    write_label_shard(tmp / "labels", 0, 1, rows, labs, [None] * len(rows))

    from types import SimpleNamespace

    meta_cfg = SimpleNamespace(teacher=SimpleNamespace(kind="encodec", sample_rate=24000))
    write_teacher_meta(meta_cfg, rows, 1, [1024] * 8, tmp / "labels")
    ds = PretrainDataset(rows, 24000, 120000, LabelStore(tmp / "labels", rows))
    sampler = SecondsBatchSampler([ds.size(i) for i in range(len(ds))], int(seconds_per_batch * 24000), seed=0)
    coll = Collater()
    batches = list(sampler)
    total = sum(len(b) * 5.0 for b in batches)
    best = []
    for r in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            coll([ds[k] for k in b])
        best.append(time.perf_counter() - t0)
    return total / statistics.median(best)


def cqt_compare(device: str, batch: int, seconds: float, repeats: int) -> dict:
    import librosa

    from conftest import synth_clip
    from mert.teachers import CQTParams, CQTTeacher, librosa_cqt

    rng = np.random.default_rng(0)
    wav = np.stack([synth_clip(rng, seconds) for _ in range(batch)])
    p = CQTParams()
    t0 = time.perf_counter()
    cqt = CQTTeacher(p).to(device)
    build = time.perf_counter() - t0
    x = torch.from_numpy(wav).to(device)

    def nn():
        y = cqt(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return y

    librosa_cqt(wav[0, :24000], p)  # numba JIT and filter cache outside the timing
    t_nn = timed(nn, repeats)
    t_lr = timed(lambda: [librosa_cqt(w, p) for w in wav], max(1, repeats // 2), warmup=0)
    a = nn().cpu().numpy()
    b = np.stack([librosa_cqt(w, p) for w in wav])
    # librosa and nnAudio scale bins differently: compare per-bin-normalised spectra
    an = a / (a.mean(axis=(0, 1), keepdims=True) + 1e-9)
    bn = b / (b.mean(axis=(0, 1), keepdims=True) + 1e-9)
    corr = float(np.corrcoef(an.reshape(-1), bn.reshape(-1))[0, 1])
    peak_agree = float((a.argmax(-1) == b.argmax(-1)).mean())
    del librosa
    return {"build_s": build, "nnaudio_s": t_nn, "librosa_s": t_lr, "shape": tuple(a.shape), "corr": corr,
            "peak_bin_agreement": peak_agree, "audio_s": batch * seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="one timed repeat each")
    args = ap.parse_args()
    from mert.configuration_mert import MERTConfig
    from mert.train import CONFIG_DIR, load_train_config

    reps = 1 if args.quick else 3
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    tiny = load_train_config(CONFIG_DIR / "tiny.yaml").model
    m95 = MERTConfig.preset("mert-v1-95m")
    r_tiny, s_tiny = step_rate(tiny, 8, 2.0, args.device, reps)
    r_95, s_95 = step_rate(m95, 1, 5.0, args.device, max(1, reps - 1))
    with tempfile.TemporaryDirectory() as tmp:
        r_data = data_rate(Path(tmp), 75.0, reps)
    c = cqt_compare(args.device, 8, 5.0, reps)
    print()
    print(f"{'what':44s} {'audio-s/s':>12s} {'s/step':>9s} {'data/step':>10s}")
    print(f"{'tiny fwd+bwd (8 x 2 s, configs/tiny.yaml)':44s} {r_tiny:12.1f} {s_tiny:9.3f} {r_data / r_tiny:9.1f}x")
    print(f"{'95M-shaped fwd+bwd (1 x 5 s, 8 codebooks)':44s} {r_95:12.2f} {s_95:9.3f} {r_data / r_95:9.1f}x")
    print(f"{'data pipeline (5 s crops, 75 s batches)':44s} {r_data:12.1f} {'':9s} {'(>= 5x)':>10s}")
    print()
    print(f"CQT target, batch 8 x 5 s, spec parameters -> {c['shape']} (kernel build {c['build_s']:.2f} s once)")
    print(f"  nnAudio on {args.device:6s}: {c['nnaudio_s']:.3f} s  ({c['audio_s'] / c['nnaudio_s']:.1f} audio-s/s)")
    print(f"  librosa on cpu   : {c['librosa_s']:.3f} s  ({c['audio_s'] / c['librosa_s']:.1f} audio-s/s)")
    print(f"  speed-up nnAudio/librosa: {c['librosa_s'] / c['nnaudio_s']:.1f}x; normalised-spectrum correlation "
          f"{c['corr']:.3f}, same peak bin in {100 * c['peak_bin_agreement']:.0f}% of frames")
    ok = r_data >= 5 * r_tiny and r_data >= 5 * r_95
    print(f"\ndata pipeline >= 5x step rate: {'yes' if ok else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
