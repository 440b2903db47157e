"""LoRA targeting, merge equality, export, LR schedule, DeepSpeed dict rendering, config files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from musiccore.config import ConfigError, load_config

from chatmusician.config import ChatMusicianConfig, DeepSpeedConfig, LoraConfig
from chatmusician.train import apply_lora, deepspeed_dict, released_lr_lambda

from conftest import CONFIGS

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_loads(path):
    cfg = load_config(ChatMusicianConfig, path)
    text = path.read_text()
    assert text.startswith("#") and "Launch" in text and "Hardware" in text  # header block
    if "7b" in path.name:
        assert cfg.optim.lr == 1e-4 and cfg.optim.weight_decay == 0.1 and cfg.optim.beta2 == 0.95
        assert cfg.data.max_len == 2048 and cfg.data.max_src_len == 1536 and cfg.model.max_position_embeddings == 2048
        assert cfg.optim.schedule == "released" and cfg.optim.warmup_ratio == 0.1 and cfg.run.seed == 1234
        assert cfg.deepspeed.enabled
    if path.name == "sft_7b_lora.yaml":
        assert (cfg.lora.enabled, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (True, 64, 16, 0.1)
        assert sorted(cfg.lora.target_modules) == sorted(PROJ) and cfg.deepspeed.stage == 2 and cfg.trainer.epochs == 2
    if path.name == "sft_7b_full.yaml":
        assert not cfg.lora.enabled and cfg.deepspeed.stage == 3 and cfg.deepspeed.offload_param == "cpu"
    if path.name == "pretrain_7b.yaml":
        assert cfg.data.stage == "pretrain" and cfg.pack.enabled and cfg.trainer.epochs == 1


def test_config_errors():
    with pytest.raises(ConfigError):
        load_config(ChatMusicianConfig, CONFIGS / "tiny.yaml", ["optim.lrr=1"])
    with pytest.raises(ConfigError):
        load_config(ChatMusicianConfig, CONFIGS / "tiny.yaml", ["deepspeed.stage=1"])
    with pytest.raises(ConfigError):
        load_config(ChatMusicianConfig, CONFIGS / "tiny.yaml", ["deepspeed.offload_param=cpu"])


def test_attention_auto_follows_packing():
    from chatmusician.tokenization import Collator, pack_samples
    from chatmusician.train import build_model, resolve_attention

    packed = load_config(ChatMusicianConfig, CONFIGS / "tiny.yaml")
    assert packed.pack.enabled and packed.model.attn_implementation == "auto"
    assert resolve_attention(packed) == ("flash_attention_2" if torch.cuda.is_available() and _has_flash() else "packed_sdpa")
    assert resolve_attention(load_config(ChatMusicianConfig, CONFIGS / "tiny.yaml", ["pack.enabled=false"])) == "sdpa"
    assert resolve_attention(load_config(ChatMusicianConfig, CONFIGS / "tiny.yaml", ["model.attn_implementation=eager"])) == "eager"

    class Tok:  # the four ids and the size build_model reads
        pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

        def __len__(self):
            return 40

    model = build_model(packed, Tok())
    assert model.config._attn_implementation == resolve_attention(packed)
    # the registered implementation trains on packed rows
    rows = pack_samples([{"input_ids": list(range(3, 3 + n)), "labels": list(range(3, 3 + n))} for n in (9, 5, 12)], 40)
    model(**Collator()(rows)).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def _has_flash() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def test_deepspeed_dict():
    z2 = deepspeed_dict(DeepSpeedConfig(stage=2), "fp16")
    assert z2["zero_optimization"]["stage"] == 2 and "offload_optimizer" not in z2["zero_optimization"]
    assert z2["fp16"]["loss_scale"] == 0 and z2["fp16"]["loss_scale_window"] == 100
    assert z2["zero_force_ds_cpu_optimizer"] is False and "optimizer" not in z2
    z3 = deepspeed_dict(DeepSpeedConfig(stage=3, offload_optimizer="cpu", offload_param="cpu"), "bf16")
    zo = z3["zero_optimization"]
    assert zo["stage"] == 3 and zo["offload_param"]["device"] == "cpu" and zo["offload_optimizer"]["device"] == "cpu"
    assert zo["stage3_max_live_parameters"] == 10**9 and zo["stage3_prefetch_bucket_size"] == 10**7
    assert z3["bf16"] == {"enabled": True} and "fp16" not in z3


def test_released_schedule_shape():
    f = released_lr_lambda(total_steps=1000, warmup_ratio=0.1, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1)  # log warmup starts at 0.1 x lr
    assert f(99) == pytest.approx(0.1 + 0.9 * math.log(100) / math.log(100))
    assert f(9) == pytest.approx(0.1 + 0.9 * math.log(10) / math.log(100))  # log, not linear: half way at step 9
    assert f(100) == pytest.approx(1.0)
    assert f(550) == pytest.approx(0.1 + 0.9 * 0.5)  # linear decay
    assert f(1000) == pytest.approx(0.1)


def _tiny(tmp_path: Path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    conf = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                       intermediate_size=64, max_position_embeddings=64, use_cache=False)
    model = LlamaForCausalLM(conf)
    base = tmp_path / "base"
    model.save_pretrained(base)
    return model, base


def test_lora_targets_and_merge_equality(tmp_path, tok_dir):
    from chatmusician.export import export_merged
    from chatmusician.generate import load_model
    from chatmusician.tokenization import load_tokenizer

    model, base = _tiny(tmp_path)
    load_tokenizer(str(tok_dir)).save_pretrained(base)
    peft_model = apply_lora(model, LoraConfig(r=64, alpha=16, dropout=0.1))
    wrapped = {n.rsplit(".", 1)[-1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == set(PROJ)
    n_lora = sum(1 for n, m in peft_model.named_modules() if hasattr(m, "lora_A"))
    assert n_lora == 2 * len(PROJ)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    pc = peft_model.peft_config["default"]
    assert (pc.r, pc.lora_alpha, pc.lora_dropout) == (64, 16, 0.1)
    # make the adapter non-trivial (B starts at zero), then save it with a pointer to its base
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    peft_model.eval()
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    (adapter / "chatmusician.json").write_text('{"base": "%s"}' % base)
    ids = torch.randint(3, 64, (2, 12))
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
        base_logits = model.get_base_model()(input_ids=ids).logits if hasattr(model, "get_base_model") else None
    out = export_merged(adapter, tmp_path / "merged")
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    merged, _ = load_model(out)
    assert not any("lora" in k for k in merged.state_dict())
    with torch.no_grad():
        got = merged(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    loaded, _ = load_model(adapter)  # adapter on its base, unmerged
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, want, atol=1e-5, rtol=1e-4)
    with pytest.raises(FileExistsError):
        export_merged(adapter, out)
    with pytest.raises(FileNotFoundError):
        export_merged(base, tmp_path / "x")
    del base_logits
