"""End-to-end: the tiny config trains through transformers.Trainer, writes the run folder and an encoder for extract."""

import json
import math

import pytest
import torch

from conftest import tiny_overrides
from mert.train import CONFIG_DIR, load_train_config, plot_curves, run


def test_tiny_run_writes_run_folder_and_loadable_encoder(synth_data, tiny_cache, tmp_path):
    from mert.modeling_mert import MERTModel

    run_dir = tmp_path / "run"
    cfg = load_train_config(CONFIG_DIR / "tiny.yaml", tiny_overrides(synth_data, run_dir, tiny_cache, **{"trainer.max_steps": 4, "trainer.save_steps": 2, "trainer.eval_steps": 2}))
    assert run(cfg) == run_dir
    for name in ("config.yaml", "git.txt", "env.txt", "metrics.jsonl", "logs/train.log.rank0", "curves.png"):
        assert (run_dir / name).is_file(), name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_acc" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and "train_acc" in r and "train_cqt_mse" in r for r in train)
    assert [r["step"] for r in evals] == [0, 2, 4]  # eval_on_start gives the untrained baseline
    assert all(0 <= r["eval_acc"] <= 1 and r["eval_acc_uniform"] == pytest.approx((1 / 16 + 1 / 8) / 2) for r in evals)
    ckpts = sorted(p.name for p in run_dir.glob("checkpoint-*"))
    assert ckpts == ["checkpoint-2", "checkpoint-4"] and not (run_dir / ".staging").exists()
    # a checkpoint is an encoder folder (heads dropped on load) and the export matches it
    enc = MERTModel.from_pretrained(run_dir / "checkpoint-4")
    exp = MERTModel.from_pretrained(run_dir / "encoder")
    wav = torch.randn(1, 24000)
    with torch.no_grad():
        a, b = enc(wav).last_hidden_state, exp(wav).last_hidden_state
    assert a.shape == (1, 74, 64) and torch.equal(a, b)
    # the same config relaunched resumes (nothing left to do), another config in the folder is refused
    run(cfg)
    bad = load_train_config(CONFIG_DIR / "tiny.yaml", tiny_overrides(synth_data, run_dir, tiny_cache, **{"optim.lr": 0.1}))
    with pytest.raises(RuntimeError, match="another config"):
        run(bad)


def test_plot_curves_handles_resumed_logs(tmp_path):
    rows = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}, {"step": 2, "loss": 2.4},
            {"step": 2, "eval_loss": 2.6, "eval_acc": 0.2, "eval_acc_majority": 0.1, "eval_acc_uniform": 0.05, "eval_cqt_mse": 0.3}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = plot_curves(tmp_path)
    assert out.is_file() and out.stat().st_size > 1000
    assert plot_curves(tmp_path / "nothing") is None


def test_missing_labels_without_auto_prepare_is_an_error(synth_data, tmp_path):
    from mert.data import DataError

    cfg = load_train_config(CONFIG_DIR / "tiny.yaml", tiny_overrides(synth_data, tmp_path / "run", tmp_path / "nolabels", **{"data.auto_prepare": "false"}))
    with pytest.raises(DataError, match="mert prepare labels"):
        run(cfg)


def test_random_encodec_teacher_requires_flag(synth_data, tmp_path):
    from mert.teachers import TeacherError

    ov = tiny_overrides(synth_data, tmp_path / "run", tmp_path / "labels", **{
        "teacher.kind": "encodec", "model.num_codebooks": 8, "model.codebook_size": 1024})
    with pytest.raises(TeacherError, match="allow_random_weights"):
        run(load_train_config(CONFIG_DIR / "tiny.yaml", ov))


def test_checkpoint_save_is_atomic(synth_data, tiny_cache, tmp_path):
    """A save that dies half-way leaves no checkpoint folder; the next launch resumes from the previous one."""
    from musiccore.hf import last_checkpoint
    from mert.train import build_trainer

    run_dir = tmp_path / "run"
    cfg = load_train_config(CONFIG_DIR / "tiny.yaml", tiny_overrides(synth_data, run_dir, tiny_cache, **{
        "trainer.max_steps": 2, "trainer.save_steps": 1, "trainer.eval_steps": 0, "trainer.plot": "false"}))
    trainer, _, _ = build_trainer(cfg)
    real = trainer._save_rng_state

    def dies_at_step_two(output_dir):
        if trainer.state.global_step == 2:
            raise OSError("disk full (simulated)")
        real(output_dir)

    trainer._save_rng_state = dies_at_step_two
    with pytest.raises(OSError, match="simulated"):
        trainer.train()
    assert (run_dir / "checkpoint-1" / "trainer_state.json").is_file()
    assert not (run_dir / "checkpoint-2").exists()  # the half-written save stayed in .staging
    assert (run_dir / ".staging" / "checkpoint-2" / "model.safetensors").is_file()
    assert last_checkpoint(run_dir) == str(run_dir / "checkpoint-1")
    run(cfg)  # relaunch: resumes from checkpoint-1, replaces the stale staging folder
    assert (run_dir / "checkpoint-2" / "trainer_state.json").is_file() and not (run_dir / ".staging").exists()
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 1 and max(steps) == 2


def test_eval_majority_baseline_uses_training_label_frequencies(synth_data, tiny_cache, tmp_path):
    """eval_acc_majority = hit rate of the most frequent TRAINING label on the held-out masked frames.

    (It used to be the mode of each validation batch's own masked targets: an oracle that overstated the baseline.)
    """
    import numpy as np

    from mert import prepare
    from mert.data import LabelStore
    from mert.loss import compute_span_mask
    from mert.train import build_trainer

    cfg = load_train_config(CONFIG_DIR / "tiny.yaml", tiny_overrides(synth_data, tmp_path / "run", tiny_cache, **{
        "data.valid_batches": 2, "data.max_tokens": 48000}))
    trainer, _, _ = build_trainer(cfg)
    metrics = trainer.evaluate()
    # independent peer: label frequencies straight from the training label cache, masks redrawn from the batch seeds
    rows = prepare.load_rows(cfg.data, "train")
    store = LabelStore(prepare.label_dir_for(cfg, rows), rows)
    all_labels = np.concatenate([store.get(i) for i in range(len(rows))], axis=1)
    majority = [int(np.bincount(all_labels[k]).argmax()) for k in range(all_labels.shape[0])]
    hits = total = batches = 0
    for bi, batch in enumerate(trainer.valid_sampler):
        if bi >= cfg.data.valid_batches:
            break
        inputs = trainer.collater([trainer.valid_data[key] for key in batch])
        wav, labels = inputs["input_values"], inputs["labels"].numpy()
        rng = np.random.default_rng([int(inputs["seed"].reshape(-1)[0]), 7])
        n_frames = cfg.model.num_frames(wav.shape[1])
        mask = compute_span_mask(wav.shape[0], n_frames, cfg.model.mask_prob, cfg.model.mask_length,
                                 cfg.model.mask_min_masks, rng)
        t = min(n_frames, labels.shape[-1])
        m = mask[:, :t]
        for k, lab in enumerate(majority):
            hits += int((labels[:, k, :t][m] == lab).sum())
            total += int(m.sum())
        batches += 1
    assert batches == 2
    assert metrics["eval_acc_majority"] == pytest.approx(hits / total)
    assert 0.0 <= metrics["eval_acc_copy"] <= 1.0


def test_trainer_overfits_one_clip(synth_data, tiny_cache, tmp_path):
    """The Trainer really steps: on one fixed 3 s clip (whole clip every step, no noise mixing, no dropout) the
    training loss falls well below its start. A trainer that never updated the weights would log flat losses
    (only the random masks change between steps)."""
    rows = [json.loads(line) for line in synth_data["train"].read_text().splitlines()[:1]]
    man = tmp_path / "one.jsonl"
    man.write_text(json.dumps(rows[0]) + "\n")
    run_dir = tmp_path / "run"
    cfg = load_train_config(CONFIG_DIR / "tiny.yaml", tiny_overrides(synth_data, run_dir, **{
        "data.train_manifest": str(man), "data.label_dir": str(tmp_path / "labels"),
        "teacher.kmeans_path": str(tiny_cache / "kmeans.npz"), "data.auto_prepare": "true",
        "data.max_sample_size": 72000, "data.max_tokens": 72000, "loss.noise_mix": "false",
        "optim.warmup_steps": 0, "optim.lr": 1e-2, "trainer.max_steps": 30, "trainer.save_steps": 1000,
        "trainer.eval_steps": 0, "trainer.plot": "false"}))
    run(cfg)
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(f"overfit: first 5 mean {first:.3f}, last 5 mean {last:.3f}")
    assert last < 0.8 * first, losses  # measured 0.63 (7.0 -> 4.4); a trainer that never steps stays near 1.0
