"""Convert the released ``xcodec_mini_infer`` folder to safetensors for :class:`yue.codec.xcodec.XCodec`.

Input layout (the Hugging Face repo ``m-a-p/xcodec_mini_infer``)::

    final_ckpt/config.yaml            generator: {name: SoundStream, config: {D, ratios, sample_rate, bins, target_bandwidths, ...}}
    final_ckpt/ckpt_00360000.pth      dict with the weights under "codec_model"
    semantic_ckpts/hf_1_325000/       HF HuBERT folder (config.json [+ weights, used if the codec dict lacks them])
    decoders/config.yaml              Vocos config
    decoders/decoder_131000.pth       vocal upsampler       decoders/decoder_151000.pth   instrumental upsampler

Output folder: ``model.safetensors`` + ``config.json`` (transformers ``XcodecModel``), ``yue_codec.json``, and when
the decoders are present ``vocos_config.yaml``, ``vocal_upsampler.safetensors``, ``inst_upsampler.safetensors``.

Checkpoints are read with ``torch.load(weights_only=True)``. The released ``.pth`` files are plain pickles of tensors
and usually load that way; if one needs arbitrary unpickling, the converter stops with a message and only proceeds
with ``allow_pickle=True`` (``--allow-pickle``), which must be reserved for trusted files.

Name mapping (upstream SoundStream -> transformers XcodecModel):

- ``encoder.block.0`` -> ``acoustic_encoder.conv1``; ``encoder.block.{b}.block.{u}.block.{0,1,2,3}`` (b=1..n, u=0..2)
  -> ``acoustic_encoder.block.{b-1}.res_unit{u+1}.{snake1,conv1,snake2,conv2}``; ``encoder.block.{b}.block.{3,4}``
  -> ``block.{b-1}.{snake1,conv1}``; ``encoder.block.{n+1}`` -> ``snake1``; ``encoder.block.{n+2}`` -> ``conv2``.
- ``decoder_2.model.0`` -> ``acoustic_decoder.conv1``; ``decoder_2.model.{b}.block.{0,1}`` -> ``block.{b-1}.{snake1,
  conv_t1}``; ``decoder_2.model.{b}.block.{u}.block.{0..3}`` (u=2..4) -> ``block.{b-1}.res_unit{u-1}.*``;
  ``decoder_2.model.{n+1}`` -> ``snake1``; ``decoder_2.model.{n+2}`` -> ``conv2``.
- weight norm (``weight_g``/``weight_v``) of the DAC convolutions is folded into plain ``weight``;
  HuBERT's positional conv keeps it as ``parametrizations.weight.original0/1``.
- ``encoder_semantic`` / ``decoder_semantic``: the inner ``.conv`` of RepCodec's conv wrappers is dropped.
- ``quantizer.vq.layers.{i}._codebook.*`` -> ``quantizer.quantizers.{i}.codebook.*``.
- ``fc_prior`` / ``fc_post1`` / ``fc_post2`` -> ``fc`` / ``fc1`` / ``fc2``; ``semantic_model.*`` unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from pathlib import Path

import torch

from yue.codec.config import SemanticConfig, XCodecConfig

log = logging.getLogger(__name__)

__all__ = ["ConversionError", "load_checkpoint", "convert_state_dict", "convert_release", "read_release_config"]


class ConversionError(ValueError):
    """Released files missing, unreadable, or not matching the expected layout (names the file)."""


_RU = ("snake1", "conv1", "snake2", "conv2")  # ResidualUnit: Snake, WNConv(k=7), Snake, WNConv(k=1)
_SEMANTIC_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "conv_dim",
                  "conv_kernel", "conv_stride", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups")  # fmt: skip
_HF_META = {"architectures", "model_type", "transformers_version", "_name_or_path", "torch_dtype", "dtype"}


def load_checkpoint(path: str | os.PathLike, allow_pickle: bool = False) -> dict:
    """``torch.load`` with ``weights_only=True``; the unrestricted unpickler only when ``allow_pickle``."""
    p = Path(path)
    if not p.is_file():
        raise ConversionError(f"{p}: checkpoint not found")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as e:  # noqa: BLE001 - SafetensorError (truncated/corrupt header) names no file
            raise ConversionError(f"{p}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    if p.stat().st_size == 0:
        raise ConversionError(f"{p}: empty file (0 bytes)")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        if not isinstance(e, pickle.UnpicklingError):  # a truncated/corrupt archive, not a pickle refusal
            raise ConversionError(f"{p}: not a readable torch checkpoint ({type(e).__name__}: {str(e)[:200]})") from e
        if not allow_pickle:
            raise ConversionError(
                f"{p}: cannot be read with weights_only=True ({type(e).__name__}: {str(e)[:200]}). It needs the "
                "legacy pickle loader, which can run code: pass --allow-pickle only for a trusted file."
            ) from e
        log.warning("%s: loading with the legacy pickle loader (allow_pickle=True)", p)
        return torch.load(p, map_location="cpu", weights_only=False)


def _fold_weight_norm(state: dict) -> dict:
    """Replace ``X.weight_g`` + ``X.weight_v`` by ``X.weight = g * v / ||v||`` (norm over all dims but 0)."""
    out = {}
    for k, v in state.items():
        if k.endswith(".weight_g"):
            base = k[: -len("weight_g")]
            vv = state.get(base + "weight_v")
            if vv is None:
                raise ConversionError(f"{k} has no matching weight_v")
            out[base + "weight"] = torch._weight_norm(vv.float(), v.float(), 0).to(vv.dtype)
        elif k.endswith(".weight_v"):
            if k[: -len("weight_v")] + "weight_g" not in state:
                raise ConversionError(f"{k} has no matching weight_g")
        else:
            out[k] = v
    return out


def _map_acoustic(key: str, n_blocks: int, decoder: bool) -> str:
    """Map one DAC key (without its ``encoder.``/``decoder_2.`` prefix) to the transformers name."""
    top = "model" if decoder else "block"
    m = re.match(rf"{top}\.(\d+)\.(.*)$", key)
    if m is None:
        raise ConversionError(f"unexpected acoustic key {key!r}")
    b, rest = int(m.group(1)), m.group(2)
    if b == 0:
        return f"conv1.{rest}"
    if b == n_blocks + 1:
        return f"snake1.{rest}"
    if b == n_blocks + 2:
        return f"conv2.{rest}"
    if not 1 <= b <= n_blocks:
        raise ConversionError(f"unexpected acoustic block index in {key!r}")
    m2 = re.match(r"block\.(\d+)\.(.*)$", rest)
    if m2 is None:
        raise ConversionError(f"unexpected acoustic key {key!r}")
    i, tail = int(m2.group(1)), m2.group(2)
    m3 = re.match(r"block\.(\d+)\.(.*)$", tail)
    if decoder:
        if i == 0:
            return f"block.{b - 1}.snake1.{tail}"
        if i == 1:
            return f"block.{b - 1}.conv_t1.{tail}"
        if 2 <= i <= 4 and m3:
            return f"block.{b - 1}.res_unit{i - 1}.{_RU[int(m3.group(1))]}.{m3.group(2)}"
    else:
        if 0 <= i <= 2 and m3:
            return f"block.{b - 1}.res_unit{i + 1}.{_RU[int(m3.group(1))]}.{m3.group(2)}"
        if i == 3:
            return f"block.{b - 1}.snake1.{tail}"
        if i == 4:
            return f"block.{b - 1}.conv1.{tail}"
    raise ConversionError(f"unexpected acoustic key {key!r}")


def convert_state_dict(state: dict, n_blocks: int) -> dict:
    """Upstream ``SoundStream`` state dict -> ``transformers.XcodecModel`` state dict (see the module docstring)."""
    out: dict[str, torch.Tensor] = {}
    acoustic = {}
    for k, v in state.items():
        if k.startswith("encoder.") or k.startswith("decoder_2."):
            acoustic[k] = v
        elif k.startswith(("encoder_semantic.", "decoder_semantic.")):
            out[re.sub(r"(conv\d?)\.conv\.", r"\1.", k)] = v
        elif k.startswith("quantizer.vq.layers."):
            out[k.replace("quantizer.vq.layers.", "quantizer.quantizers.").replace("._codebook.", ".codebook.")] = v
        elif k.startswith(("fc_prior.", "fc_post1.", "fc_post2.")):
            head, rest = k.split(".", 1)
            out[{"fc_prior": "fc", "fc_post1": "fc1", "fc_post2": "fc2"}[head] + "." + rest] = v
        elif k.startswith("semantic_model."):
            k2 = k.replace("pos_conv_embed.conv.weight_g", "pos_conv_embed.conv.parametrizations.weight.original0")
            out[k2.replace("pos_conv_embed.conv.weight_v", "pos_conv_embed.conv.parametrizations.weight.original1")] = v
        else:
            raise ConversionError(f"unexpected key {k!r} in the codec state dict")
    for k, v in _fold_weight_norm(acoustic).items():
        if k.startswith("encoder."):
            out["acoustic_encoder." + _map_acoustic(k[len("encoder.") :], n_blocks, decoder=False)] = v
        else:
            out["acoustic_decoder." + _map_acoustic(k[len("decoder_2.") :], n_blocks, decoder=True)] = v
    return out


def read_release_config(folder: str | os.PathLike) -> XCodecConfig:
    """Build the :class:`XCodecConfig` from ``final_ckpt/config.yaml`` and the HuBERT ``config.json``."""
    import yaml

    root = Path(folder)
    cfg_file = root / "final_ckpt" / "config.yaml"
    if not cfg_file.is_file():
        raise ConversionError(f"{cfg_file}: codec config not found (is {root} an xcodec_mini_infer folder?)")
    try:
        d = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConversionError(f"{cfg_file}: not valid YAML ({str(e)[:200]})") from None
    try:
        gen = d["generator"]
        g = gen["config"]
    except (KeyError, TypeError) as e:
        raise ConversionError(f"{cfg_file}: no generator.config section") from e
    if not isinstance(g, dict):
        raise ConversionError(f"{cfg_file}: generator.config must be a mapping, got {type(g).__name__}")
    if gen.get("name", "SoundStream") != "SoundStream":
        raise ConversionError(f"{cfg_file}: generator {gen.get('name')!r} is not SoundStream")
    sem_file = root / "semantic_ckpts" / "hf_1_325000" / "config.json"
    if not sem_file.is_file():
        raise ConversionError(f"{sem_file}: semantic (HuBERT) config not found")
    try:
        sem = json.loads(sem_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{sem_file}: not valid JSON ({e})") from None
    if not isinstance(sem, dict):
        raise ConversionError(f"{sem_file}: expected a JSON object, got {type(sem).__name__}")
    known = {k: sem[k] for k in _SEMANTIC_KEYS if k in sem}
    extra = {k: v for k, v in sem.items() if k not in _SEMANTIC_KEYS and k not in _HF_META}
    for k, v in known.items():  # a string where an int belongs, 0 heads: stop here with the file and the field
        vals = v if isinstance(v, list) else [v]
        if not vals or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in vals):
            raise ConversionError(f"{sem_file}: {k} must be a positive integer (or a list of them), got {v!r}")

    def num(key, default, kind=int):
        v = g.get(key, default)
        vals = v if isinstance(v, list) else [v]
        if not vals or any(isinstance(x, bool) or not isinstance(x, (int, float)) or x <= 0 for x in vals):
            raise ConversionError(f"{cfg_file}: generator.config.{key} must be positive number(s), got {v!r}")
        if kind is int and any(float(x) != int(x) for x in vals):
            raise ConversionError(f"{cfg_file}: generator.config.{key} must be integer(s), got {v!r}")
        return [kind(x) for x in vals] if isinstance(v, list) else kind(v)

    return XCodecConfig(
        sample_rate=num("sample_rate", 16000),
        ratios=list(num("ratios", [8, 5, 4, 2])),
        D=num("D", 256),
        bins=num("bins", 1024),
        target_bandwidths=list(num("target_bandwidths", [0.5, 1, 1.5, 2, 4, 6], float)),
        encoder_dim=num("encoder_dim", 64),  # not in the released yaml (hard-coded 64 upstream)
        decoder_dim=num("decoder_dim", 1024),  # likewise (hard-coded 1024)
        semantic=SemanticConfig(**known, extra=extra),
    )


def _semantic_weights(root: Path, allow_pickle: bool) -> dict:
    folder = root / "semantic_ckpts" / "hf_1_325000"
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            state = load_checkpoint(folder / name, allow_pickle)
            return {"semantic_model." + k.removeprefix("hubert."): v for k, v in state.items()}
    raise ConversionError(f"{folder}: the codec checkpoint has no semantic_model.* weights and no HuBERT weights here")


def convert_release(folder: str | os.PathLike, out_dir: str | os.PathLike, allow_pickle: bool = False,
                    checkpoint: str | None = None) -> Path:  # fmt: skip
    """Convert a released ``xcodec_mini_infer`` folder into ``out_dir`` (strict: every tensor must be used and
    every model tensor present with the right shape).

    Returns:
        ``out_dir`` (loadable with :meth:`yue.codec.xcodec.XCodec.from_pretrained`).
    """
    from safetensors.torch import save_file

    from musiccore.runs import atomic_path
    from yue.codec.xcodec import XCodec

    root = Path(folder)
    cfg = read_release_config(root)
    if checkpoint is None:
        cands = sorted((root / "final_ckpt").glob("*.pth"))
        if not cands:
            raise ConversionError(f"{root / 'final_ckpt'}: no .pth checkpoint")
        ckpt_file = cands[-1]
    else:
        ckpt_file = Path(checkpoint)
    raw = load_checkpoint(ckpt_file, allow_pickle)
    if not isinstance(raw, dict) or "codec_model" not in raw:
        raise ConversionError(f"{ckpt_file}: no 'codec_model' entry (keys: {list(raw)[:8] if isinstance(raw, dict) else type(raw)})")
    if not isinstance(raw["codec_model"], dict):
        raise ConversionError(f"{ckpt_file}: 'codec_model' is a {type(raw['codec_model']).__name__}, not a state dict")
    state = {k: v for k, v in raw["codec_model"].items() if isinstance(v, torch.Tensor)}
    if not any(k.startswith("semantic_model.") for k in state):
        state.update(_semantic_weights(root, allow_pickle))
    new = convert_state_dict(state, n_blocks=len(cfg.ratios))

    try:  # sizes that pass the type checks but cannot form the networks (e.g. heads not dividing the width)
        codec = XCodec(cfg)
    except (ValueError, TypeError, ZeroDivisionError, RuntimeError) as e:
        raise ConversionError(f"{root}: the configs give no buildable codec ({type(e).__name__}: {e})") from e
    expected = codec.model.state_dict()
    missing = sorted(set(expected) - set(new))
    unexpected = sorted(set(new) - set(expected))
    bad_shape = [k for k in set(new) & set(expected) if tuple(new[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or bad_shape:
        raise ConversionError(
            f"{ckpt_file}: layout mismatch: {len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}), {len(bad_shape)} wrong shapes (e.g. "
            f"{[(k, tuple(new[k].shape), tuple(expected[k].shape)) for k in bad_shape[:3]]})"
        )
    codec.model.load_state_dict(new, strict=True)
    out = Path(out_dir)
    codec.save_pretrained(out)

    dec = root / "decoders"
    if (dec / "config.yaml").is_file():
        from yue.codec.vocos import load_released_vocos

        (out / "vocos_config.yaml").write_text((dec / "config.yaml").read_text())
        for name, fname in (("vocal", "decoder_131000.pth"), ("inst", "decoder_151000.pth")):
            if not (dec / fname).is_file():
                log.warning("%s missing: the %s upsampler is not converted", dec / fname, name)
                continue
            voc = load_released_vocos(dec / "config.yaml", dec / fname, allow_pickle=allow_pickle)
            with atomic_path(out / f"{name}_upsampler.safetensors") as tmp:
                save_file({k: v.contiguous() for k, v in voc.state_dict().items()}, str(tmp))
    log.info("converted %s -> %s", root, out)
    return out
