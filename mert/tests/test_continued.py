"""Continued pretraining from a released folder (issue 16 item 5): model.init_from + the dictionaries' label mapping.

The released fairseq checkpoints have label tables of codes + 4 rows (fairseq Dictionary: <s>, <pad>, </s>, <unk>,
then the symbols of dict.<label>.txt in file order). The first training step's loss must equal the loss computed by
hand from the converted checkpoint's own heads with that mapping.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mert.configuration_mert import MERTConfig
from mert.convert import convert_fairseq
from mert.modeling_mert import MERTForPretraining, MERTModel, load_state_dict_file
from musiccore.config import ConfigError

from conftest import tiny_overrides
from test_convert import fairseq_checkpoint

CODES = (16, 8)  # the tiny k-means teacher of the test cache: 16 and 8 codes


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A converted fairseq-layout checkpoint with random weights (heads with 20 = 16 + 4 rows per codebook) and
    dictionaries that list the codes in a scrambled order (so row = 4 + code would be wrong)."""
    tmp = tmp_path_factory.mktemp("released")
    torch.manual_seed(3)
    cfg = MERTConfig.preset("tiny", num_codebooks=2, codebook_size=CODES[0] + 4, final_dim=16, cqt_bins=84)
    m = MERTForPretraining(cfg).eval()
    folder = convert_fairseq(fairseq_checkpoint(tmp, m, layer_norm_first=False), tmp / "ours", allow_pickle=True)
    dicts = tmp / "dicts"
    dicts.mkdir()
    orders = [list(np.random.default_rng(k).permutation(n)) for k, n in enumerate(CODES)]
    for k, order in enumerate(orders):
        (dicts / f"dict.km_{k}.txt").write_text("".join(f"{c} {100 + i}\n" for i, c in enumerate(order)))
    luts = [np.array([4 + order.index(c) for c in range(n)]) for order, n in zip(orders, CODES)]
    return folder, dicts, luts


def test_first_step_loss_equals_hand_computed_loss_with_released_head(released, synth_data, tiny_cache, tmp_path):
    from mert import train

    folder, dicts, luts = released
    ov = tiny_overrides(synth_data, tmp_path / "run", tiny_cache, **{
        "model.init_from": str(folder), "model.label_dicts": str(dicts), "trainer.max_steps": 1,
        "trainer.eval_steps": 0, "trainer.log_steps": 1, "trainer.plot": "false", "loss.noise_mix": "false",
        "loss.cqt_weight": 0.0, "model.codebook_size": 999})  # codebook_size comes from the folder, not the YAML
    cfg = train.load_train_config(train.CONFIG_DIR / "tiny.yaml", ov)
    assert cfg.model.codebook_size == 20 and cfg.model.num_codebooks == 2
    trainer, run_dir, _ = train.build_trainer(cfg)
    batch = next(iter(trainer.get_train_dataloader()))

    # ---- by hand: encoder of the folder, its final_proj and label_embs_concat, dictionary rows, cosine CE
    state = load_state_dict_file(folder)
    enc = MERTModel.from_pretrained(folder).eval()
    wav, labels = batch["input_values"].float(), batch["labels"]
    t_full = enc.config.num_frames(wav.shape[1])
    t = min(t_full, labels.shape[-1])
    rng = np.random.default_rng([int(batch["seed"][0]), 7])
    from mert.loss import compute_span_mask

    mask = torch.from_numpy(compute_span_mask(wav.shape[0], t_full, cfg.model.mask_prob, cfg.model.mask_length,
                                              cfg.model.mask_min_masks, rng))
    with torch.no_grad():
        last = enc(wav, mask_time_indices=mask).last_hidden_state[:, :t]
        conv = enc.feature_extractor(wav)
        proj = last @ state["final_proj.weight"].T + state["final_proj.bias"]  # [B, T, K * F]
        emb = state["label_embs_concat"].view(2, 20, 16)
        m = mask[:, :t]
        ce = 0.0
        for k in range(2):
            p = F.normalize(proj[..., k * 16 : (k + 1) * 16][m], dim=-1)
            logits = p @ F.normalize(emb[k], dim=-1).T / 0.1  # all 20 rows of the released table
            rows = torch.from_numpy(luts[k])[labels[:, k, :t][m]]
            ce += float((torch.logsumexp(logits, -1) - logits.gather(1, rows[:, None])[:, 0]).sum())
        hand = ce / int(m.sum()) + 10.0 * float(conv.float().pow(2).mean())

    trainer.train()
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in rows if r.get("step") == 1 and "loss" in r)
    assert first["loss"] == pytest.approx(hand, rel=1e-3, abs=1e-3)
    # and the mapping matters: row = code (no dictionary) gives another loss
    assert abs(first["loss"] - hand) < 0.1 * abs(hand - _loss_identity_rows(state, proj, labels, m, t, conv))


def _loss_identity_rows(state, proj, labels, m, t, conv) -> float:
    emb = state["label_embs_concat"].view(2, 20, 16)
    ce = 0.0
    for k in range(2):
        p = F.normalize(proj[..., k * 16 : (k + 1) * 16][m], dim=-1)
        logits = p @ F.normalize(emb[k], dim=-1).T / 0.1
        rows = labels[:, k, :t][m]
        ce += float((torch.logsumexp(logits, -1) - logits.gather(1, rows[:, None])[:, 0]).sum())
    return ce / int(m.sum()) + 10.0 * float(conv.float().pow(2).mean())


def test_label_lookup_default_released_layout_and_errors(released, synth_data, tiny_cache, tmp_path):
    from mert import train

    folder, dicts, _ = released
    base = tiny_overrides(synth_data, tmp_path / "r", tiny_cache, **{"model.init_from": str(folder)})
    # 20 rows but 16 and 8 codes: not the "codes + 4" layout -> identity, unless the dictionaries say otherwise
    cfg = train.load_train_config(train.CONFIG_DIR / "tiny.yaml", base)
    assert train.label_lookup(cfg) is None
    cfg = train.load_train_config(train.CONFIG_DIR / "tiny.yaml", base + ["teacher.kmeans_clusters=[16,16]"])
    luts = train.label_lookup(cfg)
    assert [x.tolist() for x in luts] == [list(range(4, 20))] * 2  # released layout: row = 4 + code
    (dicts.parent / "bad").mkdir(exist_ok=True)
    (dicts.parent / "bad" / "dict.km_0.txt").write_text("0 5\n1 5\n")
    (dicts.parent / "bad" / "dict.km_1.txt").write_text("0 5\n")
    cfg = train.load_train_config(train.CONFIG_DIR / "tiny.yaml", base + [f"model.label_dicts={dicts.parent / 'bad'}"])
    with pytest.raises(ConfigError, match=r"dict.km_0.txt: codes \[2, 3, 4, 5, 6\]"):
        train.label_lookup(cfg)
    with pytest.raises(ConfigError, match="model.init_from"):
        train.load_train_config(train.CONFIG_DIR / "tiny.yaml", base + [f"model.init_from={tmp_path / 'none'}"])
    # where a run started from is not written into the model's config.json
    assert "init_from" not in MERTConfig.preset("tiny", init_from="x").to_dict()
