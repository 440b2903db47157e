"""Regenerate the concrete bad files of this folder (``python make_bad_inputs.py``; they are committed).

Each file is one malformed input that a yue command or API meets in practice; ``tests/test_bad_inputs.py`` feeds
every one of them to the code and asserts the typed error (or the documented acceptance) listed in ``CASES`` there.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def _npy(name: str, arr, allow_pickle: bool = False) -> None:
    np.save(HERE / name, arr, allow_pickle=allow_pickle)


def main() -> None:
    good = (np.arange(8, dtype=np.int16).reshape(2, 4) * 100) % 1024
    # ---- code files (yue codec decode) ------------------------------------------------------------------------
    (HERE / "codes_zero_byte.npy").write_bytes(b"")
    (HERE / "codes_corrupt.npy").write_bytes(b"\x93NUMPY garbage that is not a header")
    buf = io.BytesIO()
    np.save(buf, good)
    (HERE / "codes_truncated.npy").write_bytes(buf.getvalue()[:-5])  # header intact, data cut short
    _npy("codes_empty_frames.npy", np.zeros((12, 0), np.int16))
    _npy("codes_batch_of_2.npy", np.stack([good, good]))
    _npy("codes_float_fractional.npy", good.astype(np.float32) + 0.5)
    _npy("codes_float_nan.npy", np.where(good > 300, np.nan, good).astype(np.float32))
    _npy("codes_out_of_range.npy", np.where(good == 700, 1024, good).astype(np.int16))
    _npy("codes_negative.npy", -good - 1)
    _npy("codes_13_codebooks.npy", np.zeros((13, 4), np.int16))
    _npy("codes_1d.npy", good[0])
    _npy("codes_4d.npy", good[None, None])
    _npy("codes_object.npy", np.array([[1, None]], dtype=object), allow_pickle=True)
    _npy("codes_strings.npy", np.array([["1", "2"]]))
    with open(HERE / "codes_npz_archive.npy", "wb") as fh:  # an .npz behind a .npy name
        np.savez(fh, codes=good)
    # ---- codec folder pieces (XCodec.from_pretrained, Vocos, converter) -------------------------------------
    from yue.codec import tiny_config

    cfg = dataclasses.asdict(tiny_config())
    (HERE / "codec_config_invalid.json").write_text('{"sample_rate": 16000, "D": 32,')
    (HERE / "codec_config_no_semantic.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "semantic"}))
    (HERE / "codec_config_string_int.json").write_text(json.dumps(dict(cfg, D="32")))
    (HERE / "codec_config_zero_heads.json").write_text(
        json.dumps(dict(cfg, semantic=dict(cfg["semantic"], num_attention_heads=0)))
    )
    (HERE / "codec_config_list.json").write_text("[1, 2, 3]")
    from safetensors.numpy import save

    blob = save({"w": np.ones((64, 64), np.float32)})
    (HERE / "weights_truncated.safetensors").write_bytes(blob[: len(blob) // 2])
    (HERE / "vocos_config_invalid.yaml").write_text("backbone: {init_args: [unclosed\n")
    (HERE / "vocos_config_missing_head.yaml").write_text(
        "backbone:\n  init_args: {input_channels: 64, dim: 32, intermediate_dim: 48, num_layers: 2}\n"
    )
    (HERE / "vocos_config_string_dim.yaml").write_text(
        "backbone:\n  init_args: {input_channels: 64, dim: wide, intermediate_dim: 48, num_layers: 2}\n"
        "head:\n  init_args: {dim: 32, n_fft: 64, hop_length: 16, padding: same}\n"
    )
    (HERE / "release_config_no_generator.yaml").write_text("model: {name: SoundStream}\n")
    (HERE / "release_config_string_ratio.yaml").write_text(
        "generator:\n  name: SoundStream\n  config: {D: 32, ratios: [8, five, 4, 2]}\n"
    )
    (HERE / "hubert_config_invalid.json").write_text('{"hidden_size": 32,,}')
    (HERE / "checkpoint_zero_byte.pth").write_bytes(b"")
    (HERE / "checkpoint_truncated.pth").write_bytes(b"PK\x03\x04" + b"\x00" * 60)  # a zip header, then nothing
    # ---- lyrics files (yue generate --lyrics) -------------------------------------------------------------------
    (HERE / "lyrics_empty.txt").write_text("")
    (HERE / "lyrics_not_utf8.txt").write_bytes("[verse]\nla vie en rose\n".encode("utf-16"))
    (HERE / "lyrics_no_labels.txt").write_text("just some words\nwithout any section label\n")


if __name__ == "__main__":
    main()
