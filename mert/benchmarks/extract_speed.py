"""Extraction speed and memory: our MERTModel vs transformers.HubertModel (sdpa and eager), same random weights.

Prints, in one run:
  1. throughput (seconds of audio per second, best of ``--repeats`` alternating rounds in one process) and peak
     memory of one forward above the loaded model (one process per model) for MERT-v1-95M-shaped random weights on
     a ``--clip-s`` second clip (all hidden states requested, fp32), ours / HF-sdpa / HF-eager, with the ratio
     against HubertModel-sdpa (target: ours >= 1.0x);
  2. peak memory of a ``--long-s`` second input (default 10 minutes), windowed (``mert extract``, 5 s windows,
     streamed from a file) vs whole (one forward), at several lengths to show windowed memory is flat.

Memory measurements run in fresh subprocesses so that peak RSS (CPU) or ``max_memory_allocated`` (CUDA) belongs to
that measurement alone. A whole-input forward of 10 minutes of audio needs several GB for the conv activations
alone and hours of CPU for the 95M model, so the memory part uses the tiny preset by default (``--mem-preset``
to change; whole-input runs longer than ``--whole-max-s`` are skipped).

  python benchmarks/extract_speed.py                       # defaults: 30 s clip x 2 rounds, 10-minute memory test
  python benchmarks/extract_speed.py --clip-s 10 --repeats 1 --long-s 120   # quicker
  python benchmarks/extract_speed.py --device cuda --mem-preset mert-v1-95m --whole-max-s 600   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


# ============================================================================================ workers (subprocess)


def _peak_reset(device: str):
    import resource

    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_read(device: str, base: int) -> float:
    """MB above ``base``: CUDA peak allocated, or growth of the process peak RSS (CPU)."""
    import resource

    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base) / 2**20


def _build(preset: str, impl: str, device: str):
    """Our model or a HubertModel holding the same random weights (seed 0)."""
    import torch

    from transformers import HubertConfig, HubertModel

    from mert.configuration_mert import MERTConfig
    from mert.modeling_mert import MERTModel

    torch.manual_seed(0)
    ours = MERTModel(MERTConfig.preset(preset)).eval()
    # Both models are always built, so the allocator state is the same whichever one is measured.
    hf = HubertModel(HubertConfig(**ours.config.to_hubert_dict())).eval()
    if impl == "ours":
        del hf
        return ours.to(device)
    hf.load_state_dict({k.replace("conv.weight_g", "conv.parametrizations.weight.original0")
                        .replace("conv.weight_v", "conv.parametrizations.weight.original1"): v
                        for k, v in ours.state_dict().items()}, strict=True)
    if hasattr(hf, "set_attn_implementation"):
        hf.set_attn_implementation(impl)  # "sdpa" or "eager"
    else:
        hf.config._attn_implementation = impl
    assert hf.config._attn_implementation == impl
    del ours
    return hf.to(device)


def worker_speed(preset: str, impls: str, clip_s: float, repeats: int, device: str) -> dict:
    """All models in one process, run alternately ``repeats`` times on the same clip: best and median seconds.

    Interleaving makes the comparison fair on a shared machine whose load changes during the run.
    """
    import statistics

    import torch

    models = {impl: _build(preset, impl, device) for impl in impls.split(",")}
    sr = getattr(next(iter(models.values())).config, "sample_rate", 24000)
    g = torch.Generator().manual_seed(0)
    x = (0.1 * torch.randn(1, int(clip_s * sr), generator=g)).to(device)
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            m(x[:, : 2 * sr], output_hidden_states=True)  # warm-up
        order = list(models)
        for r in range(repeats):
            for impl in order[r % len(order):] + order[: r % len(order)]:  # rotate who goes first
                m = models[impl]
                t0 = time.perf_counter()
                out = m(x, output_hidden_states=True)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[impl].append(time.perf_counter() - t0)
                assert len(out.hidden_states) == m.config.num_hidden_layers + 1
                del out
    return {k: {"best_s": min(v), "median_s": statistics.median(v), "audio_per_s": clip_s / min(v)}
            for k, v in times.items()}


def worker_peak(preset: str, impl: str, clip_s: float, device: str) -> dict:
    """Peak memory of one forward on a clip, above the loaded and warmed-up model (one model per process)."""
    import torch

    model = _build(preset, impl, device)
    sr = getattr(model.config, "sample_rate", 24000)
    g = torch.Generator().manual_seed(0)
    x = (0.1 * torch.randn(1, int(clip_s * sr), generator=g)).to(device)
    with torch.inference_mode():
        model(x[:, : 2 * sr], output_hidden_states=True)
        base = _peak_reset(device)
        out = model(x, output_hidden_states=True)
        del out
        peak = _peak_read(device, base)
    return {"peak_mb": peak}


def worker_memory(preset: str, mode: str, seconds: float, device: str, tmp: str) -> dict:
    import numpy as np
    import soundfile as sf
    import torch

    from mert.extract import ExtractOptions, extract

    model = _build(preset, "ours", device)
    sr = model.config.sample_rate
    path = os.path.join(tmp, f"long{int(seconds)}.wav")
    if not os.path.exists(path):
        with sf.SoundFile(path, "w", sr, 1, subtype="PCM_16") as f:
            rng = np.random.default_rng(0)
            left = int(seconds * sr)
            while left > 0:  # written in blocks: the benchmark itself never holds the whole file
                n = min(left, 60 * sr)
                f.write((0.1 * rng.standard_normal(n)).astype(np.float32))
                left -= n
    with torch.inference_mode():
        model(0.1 * torch.randn(1, sr, device=device), output_hidden_states=True)  # warm-up
        base = _peak_reset(device)
        t0 = time.perf_counter()
        if mode == "windowed":
            out = os.path.join(tmp, f"feat-{mode}-{int(seconds)}")
            s = extract([path], out, model, ExtractOptions(window_s=5.0, batch_size=1), device=device,
                        progress=False)
            frames = json.load(open(os.path.join(out, "index.jsonl")))["num_frames"]
            assert not s.failed, s.failed
        else:
            wav, _ = sf.read(path, dtype="float32")
            x = torch.from_numpy(wav)[None].to(device)
            hs = model(x, output_hidden_states=True).hidden_states
            frames = hs[0].shape[1]
            del hs, x, wav
        dt = time.perf_counter() - t0
        peak = _peak_read(device, base)
    return {"peak_mb": peak, "seconds": dt, "frames": frames}


def _run_worker(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    if p.returncode != 0:
        tail = (p.stderr or "").strip().splitlines()[-1:] or ["?"]
        return {"error": f"exit {p.returncode}: {tail[0][:200]}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


# ============================================================================================ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="mert-v1-95m", help="model shape for the speed part")
    ap.add_argument("--clip-s", type=float, default=30.0)
    ap.add_argument("--repeats", type=int, default=2, help="alternating rounds over the models")
    ap.add_argument("--impls", default="ours,sdpa,eager", help="subset of ours,sdpa,eager")
    ap.add_argument("--mem-preset", default="tiny", help="model shape for the long-input memory part")
    ap.add_argument("--long-s", type=float, default=600.0, help="long input length in seconds (default 10 minutes)")
    ap.add_argument("--whole-max-s", type=float, default=600.0, help="skip whole-input forwards longer than this")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--timeout", type=float, default=3600.0, help="per measurement")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        kind, *rest = a.worker
        if kind == "speed":
            preset, impls, clip_s, repeats, device = rest
            res = worker_speed(preset, impls, float(clip_s), int(repeats), device)
        elif kind == "peak":
            preset, impl, clip_s, device = rest
            res = worker_peak(preset, impl, float(clip_s), device)
        else:
            preset, mode, seconds, device, tmp = rest
            res = worker_memory(preset, mode, float(seconds), device, tmp)
        print(json.dumps(res))
        return 0

    import torch

    print(f"torch {torch.__version__}, device {a.device}, threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f} (cpus {os.cpu_count()})")
    if not a.skip_speed:
        print(f"\n1) {a.preset} random weights, {a.clip_s:.0f} s clip, batch 1, fp32, all hidden states; "
              f"models run alternately {a.repeats} times in one process (best of {a.repeats}); peak memory of one "
              "forward above the loaded model, one process per model")
        print(f"   {'model':<24}{'audio s / s':>12}{'best s':>9}{'median s':>10}{'peak MB':>9}{'vs HF-sdpa':>12}")
        impls = a.impls.split(",")
        speed = _run_worker(["speed", a.preset, a.impls, str(a.clip_s), str(a.repeats), a.device], a.timeout)
        peaks = {i: _run_worker(["peak", a.preset, i, str(a.clip_s), a.device], a.timeout) for i in impls}
        names = {"ours": "ours (MERTModel, SDPA)", "sdpa": "HubertModel sdpa", "eager": "HubertModel eager"}
        if "error" in speed:
            print(f"   speed run failed: {speed['error']}")
        else:
            ref = speed.get("sdpa", {}).get("audio_per_s")
            for impl in impls:
                r, pk = speed[impl], peaks[impl]
                ratio = f"{r['audio_per_s'] / ref:.2f}x" if ref else "-"
                mem = f"{pk['peak_mb']:.0f}" if "peak_mb" in pk else pk.get("error", "?")[:8]
                print(f"   {names[impl]:<24}{r['audio_per_s']:>12.2f}{r['best_s']:>9.1f}{r['median_s']:>10.1f}"
                      f"{mem:>9}{ratio:>12}")

    if not a.skip_memory:
        print(f"\n2) peak memory vs input length: {a.mem_preset} random weights, windowed = mert extract "
              "(5 s windows, frame-level output streamed to disk), whole = one forward")
        print(f"   {'input':>8}{'windowed MB':>13}{'(s)':>8}{'whole MB':>11}{'(s)':>8}{'frames':>9}")
        lengths = sorted({min(60.0, a.long_s), min(180.0, a.long_s), a.long_s})
        with tempfile.TemporaryDirectory() as tmp:
            for sec in lengths:
                w = _run_worker(["memory", a.mem_preset, "windowed", str(sec), a.device, tmp], a.timeout)
                if sec <= a.whole_max_s:
                    h = _run_worker(["memory", a.mem_preset, "whole", str(sec), a.device, tmp], a.timeout)
                else:
                    h = {"error": "skipped"}

                def cell(r, key, fmt):
                    return format(r[key], fmt) if key in r else r.get("error", "?")[:10]

                print(f"   {sec / 60:>6.1f}min{cell(w, 'peak_mb', '>13.0f'):>13}{cell(w, 'seconds', '>8.1f'):>8}"
                      f"{cell(h, 'peak_mb', '>11.0f'):>11}{cell(h, 'seconds', '>8.1f'):>8}{cell(w, 'frames', '>9d'):>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
