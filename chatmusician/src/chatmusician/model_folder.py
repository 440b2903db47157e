"""Checks of a local model folder before anything is loaded from it (``chat``, ``eval``, ``web``, ``export``).

A folder given to ``--model`` / ``--adapter`` is either a full Hugging Face causal-LM checkpoint (``config.json``,
``model.safetensors`` or shards, a tokenizer) or a LoRA adapter (``adapter_config.json``,
``adapter_model.safetensors``) on a local base folder. :func:`check_model_folder` reads the small files only
(JSON, safetensors headers) and raises :class:`ModelFolderError` naming the file, the field and the reason, so that
a wrong type in ``config.json``, a checkpoint of another architecture, a truncated weights file or a missing
tokenizer is one clear line instead of a traceback from deep inside ``transformers``.
"""

from __future__ import annotations

import json
from pathlib import Path

# config.json fields a LLaMA-family checkpoint needs as positive integers when present (transformers divides by some
# of them); only num_key_value_heads may be null (= num_attention_heads)
POSITIVE_INT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                       "num_key_value_heads", "intermediate_size", "max_position_embeddings")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class ModelFolderError(ValueError):
    """A model or adapter folder that cannot be loaded; the message names the file, the field and the reason."""


def read_json_object(path: Path) -> dict:
    """A JSON file that must hold an object. Raises :class:`ModelFolderError` naming the file (and line/column)."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ModelFolderError(f"{path}: not UTF-8 text (byte {e.start})") from e
    except json.JSONDecodeError as e:
        raise ModelFolderError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from e
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path}: must hold a JSON object, got {type(data).__name__}")
    return data


def _is_pos_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def check_config(path: Path) -> dict:
    """``config.json`` of a full checkpoint: a causal LM ``model_type`` and sane sizes. Returns the parsed dict.

    Raises:
        ModelFolderError: invalid JSON, no/unknown ``model_type``, a size that is not a positive integer, heads
            that do not divide the hidden size, a non-positive ``rms_norm_eps``.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    cfg = read_json_object(path)
    mt = cfg.get("model_type")
    if not isinstance(mt, str) or not mt:
        raise ModelFolderError(f"{path}: field 'model_type' missing or not a string (got {mt!r})")
    if mt not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelFolderError(f"{path}: field 'model_type' is {mt!r}, not a causal language model (ChatMusician "
                               "needs a LLaMA-family causal LM checkpoint)")
    arch = cfg.get("architectures")
    if arch is not None:
        causal = {n for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for n in ((v,) if isinstance(v, str) else v)}
        if not isinstance(arch, list) or not any(isinstance(a, str) and a in causal for a in arch):
            raise ModelFolderError(f"{path}: field 'architectures' is {arch!r}, no causal language model class "
                                   "(ChatMusician needs a LLaMA-family causal LM checkpoint)")
    for f in POSITIVE_INT_FIELDS:
        if f in cfg and not (f == "num_key_value_heads" and cfg[f] is None) and not _is_pos_int(cfg[f]):
            raise ModelFolderError(f"{path}: field {f!r} must be a positive integer, got {cfg[f]!r}")
    # an absent field takes the architecture's default (what transformers will use): check the combination
    from transformers import CONFIG_MAPPING

    try:
        defaults = CONFIG_MAPPING[mt]()
    except Exception:  # noqa: BLE001 - a config class that needs arguments: check the given fields only
        defaults = None

    def value(f):
        v = cfg.get(f)
        return v if v is not None or defaults is None else getattr(defaults, f, None)

    h, nh, kv = value("hidden_size"), value("num_attention_heads"), value("num_key_value_heads")
    if _is_pos_int(h) and _is_pos_int(nh) and h % nh:
        raise ModelFolderError(f"{path}: field 'hidden_size' {h} is not a multiple of 'num_attention_heads' {nh}")
    if _is_pos_int(nh) and _is_pos_int(kv) and nh % kv:
        raise ModelFolderError(f"{path}: field 'num_attention_heads' {nh} is not a multiple of "
                               f"'num_key_value_heads' {kv}")
    eps = cfg.get("rms_norm_eps", 1e-6)
    if not isinstance(eps, float) or not eps > 0:  # transformers' config is strict: 1 (an int) is refused too
        raise ModelFolderError(f"{path}: field 'rms_norm_eps' must be a positive number written as a float "
                               f"(e.g. 1e-06), got {eps!r}")
    from transformers import AutoConfig

    try:  # the library's own validation of every other field, with the file named
        AutoConfig.for_model(mt, **{k: v for k, v in cfg.items() if k != "model_type"})
    except Exception as e:  # noqa: BLE001 - strict-dataclass, Type and Value errors of any config class
        msg = " ".join(str(e).split())[:300]
        raise ModelFolderError(f"{path}: {type(e).__name__}: {msg}") from e
    return cfg


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors header (nothing else is read). Raises :class:`ModelFolderError` for
    a file that is not a complete safetensors file (truncated, empty, not safetensors)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError/OSError kinds: name the file
        raise ModelFolderError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e


def _weight_files(folder: Path, stem: str) -> list[Path]:
    files = sorted(folder.glob(f"{stem}*.safetensors"))
    index = folder / f"{stem}.safetensors.index.json"
    if index.exists():
        wm = read_json_object(index).get("weight_map")
        if not isinstance(wm, dict) or not wm:
            raise ModelFolderError(f"{index}: field 'weight_map' missing or empty")
        for name in sorted(set(wm.values())):
            if not isinstance(name, str) or not (folder / name).is_file():
                raise ModelFolderError(f"{index}: shard {name!r} listed in 'weight_map' is missing")
    return files


def check_full(folder: Path, need_tokenizer: bool = True) -> dict:
    """A full checkpoint folder: config, weights (safetensors; ``pytorch_model.bin`` only as transformers loads it,
    weights_only) and a tokenizer (unless ``need_tokenizer`` is False: an adapter that carries its own). Returns the
    config dict."""
    cfg = check_config(folder / "config.json")
    files = _weight_files(folder, "model")
    if not files and not (folder / "pytorch_model.bin").is_file():
        raise ModelFolderError(f"{folder}: no weights (model.safetensors or its shards)")
    shapes: dict[str, list[int]] = {}
    for f in files:
        shapes.update(safetensors_shapes(f))
    emb = shapes.get("model.embed_tokens.weight")
    if emb is not None and len(emb) == 2:
        for dim, field in zip(emb, ("vocab_size", "hidden_size")):
            if _is_pos_int(cfg.get(field)) and cfg[field] != dim:
                raise ModelFolderError(f"{folder / 'config.json'}: field {field!r} is {cfg[field]} but the weights' "
                                       f"model.embed_tokens.weight has shape {emb}")
    if need_tokenizer and not any((folder / t).is_file() for t in TOKENIZER_FILES):
        raise ModelFolderError(f"{folder}: no tokenizer ({' or '.join(TOKENIZER_FILES)}); save the training "
                               "run's tokenizer next to the weights")
    if (folder / "tokenizer.json").is_file():
        read_json_object(folder / "tokenizer.json")
    if (folder / "tokenizer_config.json").is_file():
        read_json_object(folder / "tokenizer_config.json")
    return cfg


def adapter_base_of(folder: Path) -> str:
    """Base model folder named by an adapter folder (``chatmusician.json`` ``base``, else peft's
    ``base_model_name_or_path``); must be an existing local folder (nothing is downloaded)."""
    meta = folder / "chatmusician.json"
    base = read_json_object(meta).get("base") if meta.is_file() else None
    src, field = (meta, "base") if base else (folder / "adapter_config.json", "base_model_name_or_path")
    if not base:
        base = read_json_object(folder / "adapter_config.json").get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise ModelFolderError(f"{src}: field {field!r} missing or not a string (got {base!r})")
    if not Path(base).is_dir():
        raise ModelFolderError(f"{src}: field {field!r} = {base!r} is not a local model folder (nothing is "
                               "downloaded)")
    return base


def check_adapter(folder: Path) -> str:
    """A LoRA adapter folder: adapter_config.json, readable adapter weights and a valid local base. Returns the base."""
    ac = read_json_object(folder / "adapter_config.json")
    if ac.get("peft_type", "LORA") != "LORA":
        raise ModelFolderError(f"{folder / 'adapter_config.json'}: field 'peft_type' is {ac.get('peft_type')!r}, "
                               "not LORA")
    w = folder / "adapter_model.safetensors"
    if w.exists():
        safetensors_shapes(w)
    elif not (folder / "adapter_model.bin").is_file():
        raise ModelFolderError(f"{folder}: no adapter weights (adapter_model.safetensors)")
    base = adapter_base_of(folder)
    own_tok = (folder / "tokenizer_config.json").is_file()  # generate._load takes the adapter's tokenizer then
    if own_tok and (folder / "tokenizer.json").is_file():
        read_json_object(folder / "tokenizer.json")
    check_full(Path(base), need_tokenizer=not own_tok)
    return base


def check_model_folder(path: str | Path) -> str:
    """Check a ``--model`` folder; returns ``"full"`` or ``"adapter"``.

    Raises:
        FileNotFoundError: the folder does not exist or holds neither ``config.json`` nor ``adapter_config.json``.
        ModelFolderError: anything in it that would make loading fail (see the module docstring).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: model folder does not exist")
    if (folder / "adapter_config.json").exists():
        check_adapter(folder)
        return "adapter"
    if (folder / "config.json").exists():
        check_full(folder)
        return "full"
    raise FileNotFoundError(f"{folder}: not a model folder (no config.json or adapter_config.json)")


def check_tokenizer_fits(folder: str | Path, tokenizer, model) -> None:
    """The tokenizer's ids must all have an embedding row (a tokenizer from another model does not)."""
    n_emb = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_emb:
        raise ModelFolderError(f"{folder}: the tokenizer has {len(tokenizer)} tokens but the model embeds only "
                               f"{n_emb} (tokenizer of another model?)")
