"""Checkpoint conversion: fairseq MERT checkpoints -> our folder; our folder -> a plain ``transformers.HubertModel`` folder.

Our format is a folder with ``config.json`` (:class:`MERTConfig`) and ``model.safetensors`` whose keys are the
released HF names (spec section 5.1), plus the pretraining heads when the source had them.

- :func:`convert_fairseq`: ``MERT-v1-*_fairseq.pt`` (a pickle: read only with ``allow_pickle=True``) ->
  our folder with ``final_proj``, ``label_embs_concat`` and ``cqt_head`` kept (continued pretraining).
- :func:`convert_hf`: a released HF folder (``pytorch_model.bin``, read weights-only) -> our folder (safetensors).
- :func:`export_hf`: our folder -> ``config.json`` (model_type ``hubert``) + ``model.safetensors`` that
  ``transformers.HubertModel.from_pretrained`` loads without remote code.
"""

from __future__ import annotations

import ast
import json
import logging
import pickle
import re
import types
from pathlib import Path
from typing import Any

import torch

from .configuration_mert import CONFIG_NAME, MERTConfig
from .modeling_mert import (
    HEAD_PREFIXES,
    WEIGHTS_NAME,
    CheckpointError,
    MERTForPretraining,
    MERTModel,
    load_state_dict_file,
    normalize_state_dict,
)

logger = logging.getLogger(__name__)

# ============================================================================================ fairseq reading


class _Stub:
    """Stand-in for a class that cannot be imported while unpickling (fairseq enums, dataclasses, Namespaces)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self.__dict__.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self._state = state

    def __reduce__(self):  # pragma: no cover - never re-pickled
        raise pickle.PicklingError("stub objects are read-only")


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            logger.debug("unpickling: %s.%s not importable, using a stub", module, name)
            return type(name, (_Stub,), {"__module__": f"stub.{module}"})


# torch.load takes a "pickle module": anything with Unpickler/load attributes.
_lenient_pickle = types.SimpleNamespace(
    Unpickler=_LenientUnpickler,
    load=lambda f, **kw: _LenientUnpickler(f, **kw).load(),
    __name__="mert_lenient_pickle",
)


def read_fairseq_checkpoint(path: str | Path, allow_pickle: bool = False) -> dict[str, Any]:
    """Read a fairseq checkpoint dict ``{"model": state_dict, "cfg"/"args": ...}``.

    fairseq checkpoints are pickles holding config objects, so ``torch.load(weights_only=True)`` is tried first
    and the full unpickler (which can run code from the file) is used only with ``allow_pickle=True``. Classes
    that are not importable (fairseq is not required) are replaced by inert stubs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        if not allow_pickle:
            raise CheckpointError(
                f"{path}: not loadable as weights-only ({type(e).__name__}); fairseq checkpoints are pickles that "
                "can run code when read: pass --allow-pickle (allow_pickle=True) for a file you trust"
            ) from e
        try:
            ckpt = torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=_lenient_pickle)
        except Exception as e2:  # noqa: BLE001
            raise CheckpointError(f"{path}: cannot read checkpoint ({type(e2).__name__}: {e2})") from e2
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    return ckpt


def _plain(v: Any) -> Any:
    """Config values as plain Python (enum -> value, stub -> its first argument, containers recursively)."""
    if isinstance(v, _Stub):
        args = v.__dict__.get("_args") or ()
        if args:
            return _plain(args[0])
        for key in ("_value_", "value"):  # enums / value holders rebuilt from their state
            if key in v.__dict__:
                return _plain(v.__dict__[key])
        return {k: _plain(x) for k, x in v.__dict__.items() if not k.startswith("_")}
    if hasattr(v, "value") and type(v).__module__ != "builtins" and not isinstance(v, (dict, list, str)):
        return v.value
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "items") and callable(v.items):  # DictConfig
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def _eval_layers(expr: str) -> list[tuple[int, int, int]]:
    """Safely evaluate fairseq conv_feature_layers, e.g. ``"[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"``."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            vals = [ev(e) for e in node.elts]
            return vals if isinstance(node, ast.List) else tuple(vals)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            a, b = ev(node.left), ev(node.right)
            return a + b if isinstance(node.op, ast.Add) else a * b
        raise ValueError(f"unsupported expression in conv_feature_layers: {ast.dump(node)}")

    layers = ev(ast.parse(expr, mode="eval"))
    return [tuple(int(x) for x in t[:3]) for t in layers]


def fairseq_config(ckpt: dict[str, Any], state: dict[str, torch.Tensor]) -> MERTConfig:
    """MERTConfig from a fairseq checkpoint's cfg (or legacy args), with sizes checked against the tensors."""
    model_cfg: dict[str, Any] = {}
    task_cfg: dict[str, Any] = {}
    if ckpt.get("cfg") is not None:
        cfg = _plain(ckpt["cfg"])
        model_cfg = dict(cfg.get("model") or {})
        task_cfg = dict(cfg.get("task") or {})
    elif ckpt.get("args") is not None:
        model_cfg = task_cfg = _plain(ckpt["args"]) if not isinstance(ckpt["args"], dict) else dict(ckpt["args"])
    if not model_cfg:
        raise CheckpointError("checkpoint has neither 'cfg' nor 'args': cannot tell pre-LN from post-LN")

    d = int(state["post_extract_proj.weight"].shape[0])
    n_layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k)))
    kw: dict[str, Any] = dict(
        hidden_size=d,
        num_hidden_layers=n_layers,
        intermediate_size=int(state["encoder.layers.0.fc1.weight"].shape[0]),
        num_attention_heads=int(model_cfg.get("encoder_attention_heads", d // 64)),
        hidden_act=str(model_cfg.get("activation_fn", "gelu")),
        do_stable_layer_norm=bool(model_cfg.get("layer_norm_first", False)),
        conv_bias=bool(model_cfg.get("conv_bias", False)),
        num_conv_pos_embeddings=int(model_cfg.get("conv_pos", 128)),
        num_conv_pos_embedding_groups=int(model_cfg.get("conv_pos_groups", 16)),
        feat_extract_norm="layer" if model_cfg.get("extractor_mode", "default") == "layer_norm" else "group",
        hidden_dropout=float(model_cfg.get("dropout", 0.1)),
        attention_dropout=float(model_cfg.get("attention_dropout", 0.1)),
        activation_dropout=float(model_cfg.get("activation_dropout", 0.0)),
        layerdrop=float(model_cfg.get("encoder_layerdrop", 0.05)),
        feat_proj_dropout=float(model_cfg.get("dropout_input", 0.0)),
        mask_prob=float(model_cfg.get("mask_prob", 0.8)),
        mask_length=int(model_cfg.get("mask_length", 5)),
        feature_grad_mult=float(model_cfg.get("feature_grad_mult", 0.1)),
        logit_temp=float(model_cfg.get("logit_temp", 0.1)),
        deepnorm=bool(model_cfg.get("deepnorm", False)),
        attention_relax=float(model_cfg.get("attention_relax", -1.0)),
        feature_extractor_cqt=bool(model_cfg.get("feature_extractor_cqt", False)),
        sample_rate=int(task_cfg.get("sample_rate", 24000)),
    )
    if "conv_feature_layers" in model_cfg:
        layers = _eval_layers(str(model_cfg["conv_feature_layers"]))
        kw["conv_dim"] = [c for c, _, _ in layers]
        kw["conv_kernel"] = [k for _, k, _ in layers]
        kw["conv_stride"] = [s for _, _, s in layers]
    if "final_proj.weight" in state:
        final_dim = int(model_cfg.get("final_dim", 0)) or int(state["label_embs_concat"].shape[1])
        n_cb = int(state["final_proj.weight"].shape[0]) // final_dim
        kw.update(final_dim=final_dim, num_codebooks=n_cb)
        if "label_embs_concat" in state:
            kw["codebook_size"] = int(state["label_embs_concat"].shape[0]) // n_cb
    if "encoder_cqt_model.fc.weight" in state:
        kw["cqt_bins"] = int(state["encoder_cqt_model.fc.weight"].shape[0])
    return MERTConfig(**kw)


_FAIRSEQ_RULES: list[tuple[str, str]] = [
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)$", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.(weight|bias)$", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)$", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"^layer_norm\.(weight|bias)$", r"feature_projection.layer_norm.\1"),
    (r"^post_extract_proj\.(weight|bias)$", r"feature_projection.projection.\1"),
    (r"^mask_emb$", "masked_spec_embed"),
    (r"^encoder\.pos_conv\.0\.(weight_g|weight_v|bias)$", r"encoder.pos_conv_embed.conv.\1"),
    (r"^encoder\.pos_conv\.0\.parametrizations\.weight\.original0$", "encoder.pos_conv_embed.conv.weight_g"),
    (r"^encoder\.pos_conv\.0\.parametrizations\.weight\.original1$", "encoder.pos_conv_embed.conv.weight_v"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)$",
     r"encoder.layers.\1.attention.\2.\3"),
    (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)$", r"encoder.layers.\1.layer_norm.\2"),
    (r"^encoder\.layers\.(\d+)\.fc1\.(weight|bias)$", r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"^encoder\.layers\.(\d+)\.fc2\.(weight|bias)$", r"encoder.layers.\1.feed_forward.output_dense.\2"),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)$", r"encoder.layers.\1.final_layer_norm.\2"),
    (r"^encoder\.layer_norm\.(weight|bias)$", r"encoder.layer_norm.\1"),
    (r"^final_proj\.(weight|bias)$", r"final_proj.\1"),
    (r"^label_embs_concat$", "label_embs_concat"),
    (r"^encoder_cqt_model\.fc\.(weight|bias)$", r"cqt_head.\1"),
]
# Module state that is not a model weight: nnAudio CQT kernels, mel front end, unused v0 heads.
_FAIRSEQ_SKIP = re.compile(r"^(encoder_cqt_model\.|encoder_mel_model\.|cqt\.|label_embs$|target_glu\.)")


def map_fairseq_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fairseq (wav2vec2/HuBERT/MERT) key names -> ours (spec section 5.2); unknown keys raise."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for k, v in state.items():
        for pat, rep in _FAIRSEQ_RULES:
            if re.match(pat, k):
                out[re.sub(pat, rep, k)] = v
                break
        else:
            if not _FAIRSEQ_SKIP.match(k):
                unknown.append(k)
    if unknown:
        raise CheckpointError(f"unrecognised fairseq keys: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    return out


def convert_fairseq(src: str | Path, out_dir: str | Path, allow_pickle: bool = False) -> Path:
    """fairseq ``*_fairseq.pt`` -> our folder (config.json + model.safetensors, pretraining heads kept)."""
    ckpt = read_fairseq_checkpoint(src, allow_pickle=allow_pickle)
    state = {k: v for k, v in ckpt["model"].items() if isinstance(v, torch.Tensor)}
    config = fairseq_config(ckpt, state)
    mapped = map_fairseq_state_dict(state)
    has_heads = all(k in mapped for k in ("final_proj.weight", "label_embs_concat", "cqt_head.weight"))
    if "masked_spec_embed" not in mapped and config.has_mask_embedding:
        config.mask_time_prob = 0.0  # no mask vector in the source: build the model without one
    cls = MERTForPretraining if has_heads and config.has_mask_embedding else MERTModel
    if cls is MERTModel and any(k.startswith(HEAD_PREFIXES) for k in mapped):
        logger.warning("%s: incomplete pretraining heads; writing the encoder only", src)
    model = cls(config)
    model.load_checkpoint_state(mapped, source=str(src))
    model.save_pretrained(out_dir)
    logger.info("converted %s -> %s (%s, %d tensors)", src, out_dir, cls.__name__, len(model.state_dict()))
    return Path(out_dir)


def convert_hf(src: str | Path, out_dir: str | Path) -> Path:
    """A released HF folder (config.json + pytorch_model.bin/safetensors) -> our folder (safetensors)."""
    model = MERTModel.from_pretrained(src)
    model.save_pretrained(out_dir)
    return Path(out_dir)


def export_hf(src: str | Path, out_dir: str | Path, weight_norm_names: str = "legacy") -> Path:
    """Our folder -> a folder that plain ``transformers.HubertModel.from_pretrained`` loads (no remote code).

    The pretraining heads are dropped. ``weight_norm_names``: "legacy" writes ``conv.weight_g/weight_v`` (what
    the released files hold; transformers maps them onto its parametrization), "parametrizations" writes
    ``conv.parametrizations.weight.original0/1`` (what transformers >= 4.3x saves).
    """
    from safetensors.torch import save_file

    from musiccore.runs import atomic_path, atomic_write_text

    if weight_norm_names not in ("legacy", "parametrizations"):
        raise ValueError(f"weight_norm_names must be 'legacy' or 'parametrizations', got {weight_norm_names!r}")
    model = MERTModel.from_pretrained(src)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if weight_norm_names == "parametrizations":
        state = {
            k.replace("conv.weight_g", "conv.parametrizations.weight.original0").replace(
                "conv.weight_v", "conv.parametrizations.weight.original1"
            ): v
            for k, v in state.items()
        }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_hubert_dict()
    cfg.update(model_type="hubert", architectures=["HubertModel"], torch_dtype="float32")
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    atomic_write_text(out / CONFIG_NAME, json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return out


def describe(path: str | Path) -> dict[str, Any]:
    """Short summary of a model folder (for logs and tests): config, tensor count, heads present."""
    path = Path(path)
    state = normalize_state_dict(load_state_dict_file(path))
    cfg = MERTConfig.from_json(path / CONFIG_NAME)
    return {
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "pre_ln": cfg.do_stable_layer_norm,
        "sample_rate": cfg.sample_rate,
        "tensors": len(state),
        "parameters": int(sum(v.numel() for v in state.values())),
        "heads": sorted({k.split(".")[0] for k in state if k.startswith(HEAD_PREFIXES)}),
    }
