"""Tiny codec training: losses are finite, codebooks are learned (EMA), a checkpoint is written and resumed."""

import json

import numpy as np
import torch

from yue.codec import XCodec, tiny_config
from yue.codec.losses import multiscale_stft_loss, rvq_forward, snr_db
from yue.codec.train import CodecTrainConfig, evaluate_codec, train_codec


def test_rvq_forward_inits_and_updates_codebooks():
    torch.manual_seed(0)
    codec = XCodec(tiny_config())
    q = codec.model.quantizer
    assert float(q.quantizers[0].codebook.embed.abs().sum()) == 0  # transformers init: zeros
    e = torch.randn(4, codec.cfg.D + codec.cfg.semantic.hidden_size, 300, requires_grad=True)  # 1200 vectors > 1024 codes
    out, codes, commit = rvq_forward(q, e, n_q=3, training=True)
    assert codes.shape == (3, 4, 300) and out.shape == e.shape
    assert float(q.quantizers[0].codebook.embed.abs().sum()) > 0
    assert float(q.quantizers[3].codebook.embed.abs().sum()) == 0  # unused codebooks untouched
    assert torch.isfinite(commit) and commit > 0
    out.sum().backward()
    assert e.grad is not None and torch.isfinite(e.grad).all()  # straight-through gradient
    # eval mode: the same codes as the transformers quantizer
    _, codes_eval, _ = rvq_forward(q, e.detach(), n_q=3, training=False)
    assert torch.equal(codes_eval, q.encode(e.detach(), bandwidth=1.5))


def test_stft_loss_and_snr():
    x = torch.randn(1, 4000)
    assert float(multiscale_stft_loss(x, x)) < 1e-4
    assert float(multiscale_stft_loss(0.5 * x, x)) > 0.1
    assert snr_db(x, x + 0.1 * torch.randn_like(x)) > 15


def test_train_resume_and_checkpoint(tmp_path):
    cfg = CodecTrainConfig()
    cfg.trainer.run_dir = str(tmp_path / "run")
    cfg.trainer.max_steps = 2
    cfg.trainer.log_every = 1
    cfg.trainer.save_every = 1
    cfg.data.root = str(tmp_path / "no-kit")  # synthesized songs (warned)
    cfg.data.max_songs = 1
    cfg.data.segment_s = 0.2
    cfg.data.batch_size = 1
    run = train_codec(cfg)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in rows)
    state = json.loads((run / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 2
    codec = XCodec.from_pretrained(run / "checkpoint")
    assert float(codec.model.quantizer.quantizers[0].codebook.embed.abs().sum()) > 0
    # relaunch with more steps resumes at step 2 (config differs only in max_steps -> new run dir needed)
    cfg.trainer.max_steps = 3
    import shutil

    run2 = tmp_path / "run2"
    shutil.copytree(run / "checkpoint", run2 / "checkpoint")
    cfg.trainer.run_dir = str(run2)
    train_codec(cfg)
    rows2 = [json.loads(line) for line in (run2 / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows2] == [3]
    r = evaluate_codec(codec, np.random.default_rng(0).standard_normal(3200).astype(np.float32) * 0.1, 6.0)
    assert r["codes_shape"] == [12, 10] and np.isfinite(r["snr_db"]) and r["recon"].shape == (3200,)


def test_init_codebooks_fits_every_stage_of_the_residual():
    from yue.codec.losses import init_codebooks

    torch.manual_seed(0)
    codec = XCodec(tiny_config())
    q = codec.model.quantizer
    e = torch.randn(8, codec.cfg.D + codec.cfg.semantic.hidden_size, 400)  # 3200 vectors > 1024 codes
    assert init_codebooks(q, e) == 12
    assert init_codebooks(q, e) == 0  # initialised codebooks are left alone
    residual, energies = e.transpose(1, 2).reshape(-1, e.shape[1]), []
    for layer in q.quantizers:
        assert float(layer.codebook.embed.abs().sum()) > 0
        residual = residual - torch.nn.functional.embedding(layer.codebook.quantize(residual), layer.codebook.embed)
        energies.append(float(residual.pow(2).mean()))
    assert all(b < a for a, b in zip(energies, energies[1:]))  # each stage removes some of what is left
    assert energies[-1] > 0


def test_training_starts_with_initialised_codebooks(tmp_path):
    """Regression: codebooks were k-means'd from the first 2-crop batch (fewer vectors than codes), so codebook 0
    copied that batch, the residual was exactly zero and codebooks 1-11 started as all-zero tables."""
    cfg = CodecTrainConfig()
    cfg.trainer.run_dir = str(tmp_path / "run")
    cfg.trainer.max_steps = 1
    cfg.data.root = str(tmp_path / "no-kit")  # synthesized songs (warned)
    cfg.data.max_songs = 2
    cfg.data.segment_s = 0.64  # 32 frames per crop: 2 crops = 64 vectors for 1024 codes
    cfg.data.batch_size = 2
    codec = XCodec.from_pretrained(train_codec(cfg) / "checkpoint")
    tables = [layer.codebook.embed for layer in codec.model.quantizer.quantizers]
    assert all(float(t.abs().sum()) > 0 for t in tables)
    assert len(torch.unique(tables[0], dim=0)) > 500  # not copies of the 64 vectors of one batch
