"""LM training: labels and loss by hand, run folder + LM folder + eval, resume after a kill, init_from checks, LoRA."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from yue.lm.data import BlockStream, Collator, DocumentBuilder, PreparedData, eval_blocks, pack_documents
from yue.lm.model import LMLoadError, build_lm, save_lm
from yue.lm.train import build_model, train

torch.set_num_threads(1)
PROJECT = Path(__file__).resolve().parents[1]


def _hand_ce(model, batch) -> float:
    """Next-token cross-entropy computed document by document: every segment of a row between position-id restarts
    runs through the model ALONE (positions 0..n-1), and only targets inside it with a label are scored."""
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, lab, pos in zip(batch["input_ids"], batch["labels"], batch["position_ids"]):
            starts = (pos == 0).nonzero().flatten().tolist() + [len(ids)]
            for a, b in zip(starts, starts[1:]):
                logits = model(input_ids=ids[None, a:b], position_ids=torch.arange(b - a)[None]).logits[0]
                tgt = lab[a + 1 : b]
                keep = tgt != -100
                if keep.any():
                    lp = torch.log_softmax(logits[:-1][keep].double(), -1).gather(1, tgt[keep][:, None])
                    total -= float(lp.sum())
                    count += int(keep.sum())
    return total / count


def test_loss_matches_hand_ce_packed_masked_padded(prepared_dir, lm_cfg):
    cfg = lm_cfg("stage1", "data.block_size=160")
    data = PreparedData(prepared_dir)
    builder = DocumentBuilder(data, cfg)
    blocks = eval_blocks(builder, data.split("valid") + data.split("test"), ["dual", "vocal"])
    batch = Collator(data.tok.id("<PAD>"))(blocks[-2:])  # the last block is padded and holds document starts
    assert (batch["labels"][1] == -100).sum() > 1 and (batch["position_ids"][1:, 1:] == 0).any()
    model = build_model(cfg, data.tok, "sdpa", torch.float32)
    with torch.no_grad():
        loss = float(model(**batch).loss)
    assert abs(loss - _hand_ce(model, batch)) < 1e-4


@pytest.mark.parametrize("doc_masking", [True, False])
def test_no_eod_crossing_or_padding_position_is_scored(tiny_tokenizer, doc_masking):
    eod, pad = tiny_tokenizer.id("<EOD>"), tiny_tokenizer.id("<PAD>")
    d1, d2 = np.array([5, 6, 7, 8, eod]), np.array([9, 10, 11, eod])
    (blk,) = pack_documents([d1, d2], 12, doc_masking, pad)
    batch = Collator(pad, doc_masking)([blk])
    model = build_lm("tiny_stage1", tiny_tokenizer.layout, seed=0)
    out = model(**batch)
    out.logits.retain_grad()
    out.loss.backward()
    g = out.logits.grad[0].abs().sum(-1)  # [T]: how much each position's prediction enters the loss
    n = len(d1) + len(d2)
    scored = (g > 0).nonzero().flatten().tolist()
    # position 4 is d1's <EOD>: predicting d2's first token from it would cross documents; n-1 predicts padding
    assert scored == [0, 1, 2, 3, 5, 6, 7]
    assert g[len(d1) - 1] == 0 and (g[n - 1 :] == 0).all()


def test_training_loss_is_hand_ce_of_the_first_batch(lm_cfg):
    cfg = lm_cfg("stage1", "trainer.max_steps=1", "eval.enabled=false", "data.block_size=128")
    s = train(cfg)
    run = Path(s["run_dir"])
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][0]
    assert logged["step"] == 1
    data = PreparedData(cfg.data.prepared)
    it = iter(BlockStream(DocumentBuilder(data, cfg), data.split("train"), 2, cfg.run.seed))
    batch = Collator(data.tok.id("<PAD>"))([next(it), next(it)])
    model = build_model(cfg, data.tok, "sdpa", torch.float32)  # the same seeded initial weights
    assert abs(logged["loss"] - _hand_ce(model, batch)) < 2e-4  # the Trainer logs 4 decimals


def test_loss_falls_on_a_tiny_overfit_batch(prepared_dir, lm_cfg):
    cfg = lm_cfg("stage2", "data.block_size=128")
    data = PreparedData(prepared_dir)
    it = iter(BlockStream(DocumentBuilder(data, cfg), data.split("train"), 1, 0))
    batch = Collator(data.tok.id("<PAD>"))([next(it)])
    model = build_model(cfg, data.tok, "sdpa", torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.4 * losses[0], losses


def test_stage2_cli_run_folder_lm_folder_and_eval(lm_cfg, prepared_dir, tmp_path):
    from yue.cli import main
    from yue.lm.model import lm_info, load_lm

    run = tmp_path / "run2"
    rc = main(["train", "--config", str(PROJECT / "configs" / "tiny_stage2.yaml"), f"data.prepared={prepared_dir}",
               f"run.dir={run}", "data.block_size=256", "data.stage2_chunk_frames=100", "trainer.max_steps=3",
               "trainer.save_steps=2", "trainer.log_every=1", "eval.max_blocks=3"])  # fmt: skip
    assert rc == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["global_step"] == 3 and s["final"] and s["zero"] is None
    for f in ("config.yaml", "git.txt", "env.txt", "tokens.json", "logs/train.log.rank0", "eval.json",
              "checkpoints/checkpoint-2/model.safetensors", "checkpoints/checkpoint-2/optimizer.pt"):
        assert (run / f).exists(), f
    assert any((run / "tb").rglob("events.out.tfevents*"))
    info = lm_info(run / "final")
    assert info["task"] == "stage2" and info["stage2_chunk_frames"] == 100
    model, tok = load_lm(run / "final")
    assert (run / "final" / "tokenizer.model").is_file() and tok.layout.to_json() == PreparedData(prepared_dir).tok.layout.to_json()
    ev = json.loads((run / "eval.json").read_text())
    for split in ("valid", "test", "all"):
        r = ev["splits"][split]
        assert r["tokens"] > 0 and np.isfinite(r["model"]["ce"])
        assert {"acc_cb1_7", "ce_codec"} <= set(r["model"]) and "acc_cb1_7" in r["unigram"] and "acc_cb1_7" in r["bigram"]
        assert set(r["model"]["acc_per_codebook"]) == {str(k) for k in range(1, 8)} or set(r["model"]["acc_per_codebook"]) == set(range(1, 8))
    toks = json.loads((run / "tokens.json").read_text())
    assert toks["train"]["vocal"]["songs"] == 3 and toks["test"]["mix"]["tokens"] > 0


def test_init_from_checks_vocab_and_special_ids(lm_cfg, tiny_tokenizer, tmp_path):
    from transformers import LlamaConfig

    layout = tiny_tokenizer.layout
    small = tmp_path / "small"
    LlamaConfig(vocab_size=layout.vocab_size - 5, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64).save_pretrained(small)  # fmt: skip
    cfg = lm_cfg("stage1", f"model.init_from={small}")
    with pytest.raises(LMLoadError) as e:
        train(cfg)
    assert f"vocab_size {layout.vocab_size - 5}" in str(e.value) and f"needs {layout.vocab_size} ids" in str(e.value)
    assert not (Path(cfg.run.dir) / "checkpoints").exists()  # stopped before training
    with pytest.raises(LMLoadError, match=rf"vocab_size 100 .* needs {layout.vocab_size} ids"):
        train(lm_cfg("stage1", "model.vocab_size=100", f"run.dir={tmp_path / 'r2'}"))
    # a folder whose layout puts <EOD> elsewhere
    good = save_lm(build_lm("tiny_stage1", layout, seed=0), tiny_tokenizer, tmp_path / "lm")
    lay = json.loads((good / "layout.json").read_text())
    eod = lay["special_tokens"]["<EOD>"]
    lay["special_tokens"]["<EOD>"] = eod + 1
    (good / "layout.json").write_text(json.dumps(lay))
    with pytest.raises(LMLoadError, match=rf"<EOD> has id {eod + 1} in the model's layout but {eod}"):
        train(lm_cfg("stage1", f"model.init_from={good}", f"run.dir={tmp_path / 'r3'}"))


def test_lora_from_init_folder(lm_cfg, tiny_tokenizer, tmp_path):
    from yue.lm.model import load_lm

    base = save_lm(build_lm("tiny_stage1", tiny_tokenizer.layout, seed=1), tiny_tokenizer, tmp_path / "base")
    s = train(lm_cfg("stage1", f"model.init_from={base}", "lora.enabled=true", "lora.r=4", "trainer.max_steps=2",
                     "eval.enabled=false"))  # fmt: skip
    run = Path(s["run_dir"])
    assert (run / "final_adapter" / "adapter_config.json").is_file()
    adapter = json.loads((run / "final_adapter" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"] and adapter["lora_alpha"] == 32
    merged, _ = load_lm(run / "final")  # a plain LlamaForCausalLM: the adapter was merged
    b0, _ = load_lm(base)
    diff = [(p - q).abs().max().item() for (n, p), (_, q) in zip(merged.named_parameters(), b0.named_parameters())
            if "q_proj" in n]  # fmt: skip
    assert max(diff) > 0  # the trained adapter changed the attention projections
    assert all(torch.equal(p, q) for (n, p), (_, q) in zip(merged.named_parameters(), b0.named_parameters())
               if "mlp" in n)  # fmt: skip


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra})
    return env


def test_resume_after_kill(prepared_dir, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "yue.cli", "train", "--config", str(PROJECT / "configs" / "tiny_stage1.yaml"),
           f"data.prepared={prepared_dir}", f"run.dir={run}", "data.block_size=128", "trainer.micro_batch=1",
           "trainer.max_steps=16", "trainer.save_steps=4", "trainer.save_total_limit=20", "trainer.log_every=1",
           "eval.enabled=false"]  # fmt: skip
    p = subprocess.Popen(cmd, cwd=PROJECT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    t0 = time.monotonic()
    while not ckpt.exists():
        assert p.poll() is None, "training exited before its first checkpoint"
        assert time.monotonic() - t0 < 300, "no checkpoint within 300 s"
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)  # a hard kill: nothing else gets saved
    p.wait()
    assert not (run / "summary.json").exists()
    before = (run / "metrics.jsonl").read_text().count("\n")
    r = subprocess.run(cmd, cwd=PROJECT, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((run / "summary.json").read_text())
    n = int(s["resumed_from"].rsplit("-", 1)[1])
    assert s["global_step"] == 16 and 4 <= n < 16 and n % 4 == 0
    # what only a resume shows: the loop starts at the checkpoint's step with AdamW's and the scheduler's state
    assert s["start_state"] == {"global_step": n, "adam_step": float(n), "lr_scheduler_step": n}
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()[before:]]
    assert [r["step"] for r in rows if "loss" in r] == list(range(n + 1, 17))  # the relaunch trains only the rest


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_two_steps(prepared_dir, tmp_path, stage):
    """ZeRO-2 / ZeRO-3 on CPU over gloo, one process, two steps of the tiny stage-1 config; asserts that the
    DeepSpeed engine ran at that stage with its ZeRO optimizer holding the fp32 partition, and saved ZeRO shards."""
    pytest.importorskip("deepspeed")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "yue.cli", "train", "--config", str(PROJECT / "configs" / "tiny_stage1.yaml"),
           f"data.prepared={prepared_dir}", f"run.dir={run}", "data.block_size=128", "trainer.max_steps=2",
           "trainer.save_steps=2", "trainer.log_every=1", "eval.max_blocks=2", "deepspeed.enabled=true",
           f"deepspeed.stage={stage}"]  # fmt: skip
    env = _env(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(29600 + os.getpid() % 1000 + stage))  # fmt: skip
    r = subprocess.run(cmd, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    s = json.loads((run / "summary.json").read_text())
    assert s["global_step"] == 2 and s["final"]
    opt = {2: "DeepSpeedZeroOptimizer", 3: "DeepSpeedZeroOptimizer_Stage3"}[stage]
    assert s["zero"]["stage"] == stage and s["zero"]["optimizer"] == opt and s["zero"]["partitioned_fp32_numel"] > 0
    assert json.loads((run / "deepspeed.json").read_text())["zero_optimization"]["stage"] == stage
    shards = list((run / "checkpoints" / "checkpoint-2").rglob("*zero_pp_rank_0_*optim_states.pt"))
    assert shards, "no ZeRO optimizer shard in the checkpoint"
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(losses) == 2 and all(np.isfinite(v) and v > 0 for v in losses)
    assert json.loads((run / "eval.json").read_text())["splits"]["all"]["tokens"] > 0  # final/ loads after ZeRO


def _kit_prepared() -> Path | None:
    p = Path(os.environ.get("YUE_LM_PREPARED", PROJECT / "runs" / "prepared" / "tiny"))
    return p if (p / "manifest.jsonl").is_file() else None


@pytest.mark.slow
def test_signs_of_life_on_held_out_kit_songs(tmp_path):
    """Tiny stage 1 on the kit's songs (a `yue prepare` folder made with a trained tiny codec: $YUE_LM_PREPARED or
    runs/prepared/tiny): held-out cross-entropy below a unigram and a bigram model of the same training tokens.
    ~20 min on one loaded CPU core (the README table has the numbers of both stages)."""
    from musiccore.config import load_config
    from yue.lm.config import LMTrainConfig

    prepared = _kit_prepared()
    if prepared is None:
        pytest.skip("no prepared kit folder (set $YUE_LM_PREPARED; see configs/tiny_stage1.yaml)")
    cfg = load_config(LMTrainConfig, PROJECT / "configs" / "tiny_stage1.yaml",
                      [f"data.prepared={prepared}", f"run.dir={tmp_path / 's1'}"])  # fmt: skip
    s = train(cfg)
    ev = json.loads((Path(s["run_dir"]) / "eval.json").read_text())["splits"]
    r = ev.get("all") or next(iter(ev.values()))
    assert r["model"]["ce"] < r["bigram"]["ce"] - 0.1 and r["model"]["ce"] < r["unigram"]["ce"] - 0.1, r
