"""X-Codec: converter from upstream's layout (strict), encode/decode shapes, input normalisation, Vocos, post-process."""

import numpy as np
import pytest
import torch

from yue.codec import CodecInputError, CodecLoadError, XCodec, prepare_waveform, released_config, tiny_config
from yue.codec.convert import ConversionError, convert_release, convert_state_dict, load_checkpoint


def test_converted_codec_loads_strictly(tiny_codec_dir, tiny_release):
    from safetensors.torch import load_file

    codec = XCodec.from_pretrained(tiny_codec_dir)
    state = load_file(str(tiny_codec_dir / "model.safetensors"))
    assert set(state) == set(codec.model.state_dict())
    # weight norm folded: w = g * v / ||v|| (per output channel)
    raw = torch.load(tiny_release / "final_ckpt" / "ckpt_00360000.pth", weights_only=True)["codec_model"]
    g, v = raw["encoder.block.0.weight_g"], raw["encoder.block.0.weight_v"]
    w = g * v / v.flatten(1).norm(dim=1)[:, None, None]
    assert torch.allclose(state["acoustic_encoder.conv1.weight"], w, atol=1e-6)
    # a few mapped positions hold the upstream tensors
    assert torch.equal(state["acoustic_encoder.block.2.res_unit3.snake2.alpha"], raw["encoder.block.3.block.2.block.2.alpha"])
    assert torch.equal(state["acoustic_decoder.block.1.res_unit2.conv2.bias"], raw["decoder_2.model.2.block.3.block.3.bias"])
    assert torch.equal(state["fc.weight"], raw["fc_prior.weight"])
    assert torch.equal(state["quantizer.quantizers.5.codebook.embed"], raw["quantizer.vq.layers.5._codebook.embed"])
    assert torch.equal(state["encoder_semantic.conv_blocks.1.conv.bias"], raw["encoder_semantic.conv_blocks.1.conv.conv.bias"])
    assert torch.equal(
        state["semantic_model.encoder.pos_conv_embed.conv.parametrizations.weight.original1"],
        raw["semantic_model.encoder.pos_conv_embed.conv.weight_v"],
    )


@pytest.mark.parametrize("n", [3200, 3201, 3279, 3281])  # N mod 320 = 0, 1, 79, 81: upstream edge cases
def test_encode_decode_shapes(tiny_codec, n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 0.1
    codes = tiny_codec.encode(x)
    t = {3200: 10, 3201: 10, 3279: 10, 3281: 11}[n]  # upstream framing (test_codec_framing.py has the full rule)
    assert codes.shape == (1, 12, t) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < 1024
    y = tiny_codec.decode(codes)
    assert y.shape == (1, 1, t * 320) and torch.isfinite(y).all()


def test_target_bw_selects_codebooks(tiny_codec):
    x = torch.randn(8000) * 0.1
    full = tiny_codec.encode(x)
    for bw, k in ((0.5, 1), (1.0, 2), (2.0, 4), (4.0, 8), (6.0, 12)):
        c = tiny_codec.encode(x, target_bw=bw)
        assert c.shape[1] == k
        assert torch.equal(c, full[:, :k])  # RVQ: a lower bandwidth is a prefix of the codes
    with pytest.raises(CodecInputError, match="target_bw 3.0"):
        tiny_codec.encode(x, target_bw=3.0)


def test_encode_is_the_wrapped_xcodecmodel_encode_on_aligned_input(tiny_codec):
    """Wrapper consistency, not a peer: XCodec.encode hands the clip to this very XcodecModel.encode. The independent
    check against the spec's composition is tests/test_peers.py."""
    x = torch.randn(1, 1, 320 * 40) * 0.1
    ours = tiny_codec.encode(x, 6.0)
    peer = tiny_codec.model.encode(x, bandwidth=6.0, return_dict=False)
    assert torch.equal(ours, peer)
    emb = tiny_codec.get_embed(ours)
    assert emb.shape == (1, tiny_codec.cfg.D + tiny_codec.cfg.semantic.hidden_size, 40)
    cbs = tiny_codec.model.quantizer.quantizers
    manual = sum(cbs[k].codebook.embed[ours[0, k]] for k in range(12)).T
    assert torch.allclose(emb[0], manual, atol=1e-5)


def test_encode_long_chunks(tiny_codec):
    x = torch.randn(16000 * 2 + 123) * 0.1
    one = tiny_codec.encode(x)[0]
    assert torch.equal(tiny_codec.encode_long(x, chunk_s=10.0), one)  # single chunk == one-shot
    chunked = tiny_codec.encode_long(x, chunk_s=1.0, context_s=0.2)
    assert chunked.shape == one.shape == (12, 101)  # 32123 = 320 * 100 + 123 samples: 101 frames, as upstream


def test_decode_rejects_bad_codes(tiny_codec):
    with pytest.raises(CodecInputError, match="outside 0..1023"):
        tiny_codec.decode(torch.tensor([[[1, 1024]]]))
    with pytest.raises(CodecInputError, match="codebooks"):
        tiny_codec.decode(torch.zeros(1, 13, 4, dtype=torch.long))
    with pytest.raises(CodecInputError, match="expected codes"):
        tiny_codec.decode(torch.zeros(4, dtype=torch.long))


def test_prepare_waveform_normalisations():
    sr = 48000
    t = np.arange(sr) / sr
    left, right = np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, right]).astype(np.float32)
    mono = prepare_waveform(stereo, sr)  # stereo 48 kHz -> mono 16 kHz (channels averaged, resampled)
    assert mono.shape == (16000,)
    assert abs(np.abs(mono).max() - 0.75) < 0.02
    assert prepare_waveform(stereo.T, sr).shape == (16000,)  # [N, C] soundfile layout accepted too
    with pytest.raises(CodecInputError, match="silent"):
        prepare_waveform(np.zeros(16000), 16000, where="quiet.wav")
    assert prepare_waveform(np.zeros(16000), 16000, allow_silence=True).shape == (16000,)
    with pytest.raises(CodecInputError, match="NaN"):
        prepare_waveform(np.array([0.1, np.nan]), 16000)
    with pytest.raises(CodecInputError, match="no samples"):
        prepare_waveform(np.zeros((1, 0)), 16000)
    with pytest.raises(CodecInputError, match="sample rate"):
        prepare_waveform(np.ones(10), 0)


def test_encode_rejects_non_mono(tiny_codec):
    with pytest.raises(CodecInputError, match="mono"):
        tiny_codec.encode(torch.randn(1, 2, 1000))


def test_converter_errors(tmp_path, tiny_release):
    with pytest.raises(ConversionError, match="codec config not found"):
        convert_release(tmp_path, tmp_path / "out")
    with pytest.raises(ConversionError, match="unexpected key"):
        convert_state_dict({"mystery.weight": torch.zeros(1)}, 4)
    with pytest.raises(ConversionError, match="weight_v"):
        convert_state_dict({"encoder.block.0.weight_g": torch.ones(2, 1, 1)}, 4)


def test_converter_detects_wrong_shapes(tmp_path):
    from fake_release import write_fake_release

    cfg = tiny_config()
    root = write_fake_release(tmp_path / "rel", cfg)
    ck = root / "final_ckpt" / "ckpt_00360000.pth"
    d = torch.load(ck, weights_only=True)
    d["codec_model"]["fc_post2.bias"] = torch.zeros(7)
    del d["codec_model"]["fc_post1.bias"]
    torch.save(d, ck)
    with pytest.raises(ConversionError, match="1 missing.*wrong shapes"):
        convert_release(root, tmp_path / "out")


def test_legacy_pickle_needs_opt_in(tmp_path):
    from fake_release import _Opaque

    p = tmp_path / "legacy.pth"
    torch.save({"codec_model": {}, "x": _Opaque()}, p)
    with pytest.raises(ConversionError, match="--allow-pickle"):
        load_checkpoint(p)
    assert "codec_model" in load_checkpoint(p, allow_pickle=True)


def test_from_pretrained_errors(tmp_path, tiny_codec_dir):
    with pytest.raises(CodecLoadError, match="missing yue_codec.json"):
        XCodec.from_pretrained(tmp_path)
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_codec_dir, bad)
    cfg = json.loads((bad / "yue_codec.json").read_text())
    cfg["D"] = 16
    (bad / "yue_codec.json").write_text(json.dumps(cfg))
    with pytest.raises(CodecLoadError, match="does not match"):
        XCodec.from_pretrained(bad)


def test_vocos_upsamplers(tiny_codec, tiny_codec_dir):
    from yue.codec.vocos import VocosConfig, VocosDecoder, VocosLoadError

    cfg = VocosConfig.from_yaml(tiny_codec_dir / "vocos_config.yaml")
    voc = VocosDecoder(cfg).load_weights(tiny_codec_dir / "vocal_upsampler.safetensors").eval()
    inst = VocosDecoder(cfg).load_weights(tiny_codec_dir / "inst_upsampler.safetensors").eval()
    codes = tiny_codec.encode(torch.randn(16000) * 0.1)
    with torch.no_grad():
        y = voc(tiny_codec.get_embed(codes))
        z = inst(tiny_codec.get_embed(codes))
    assert y.shape == (1, 50 * 882) and voc.sample_rate == 44100
    assert torch.isfinite(y).all() and not torch.allclose(y, z)  # two different decoders
    assert set(voc.state_dict()) >= {"backbone.embed.weight", "backbone.convnext.0.gamma", "head.out.weight",
                                     "head.istft.window", "backbone.final_layer_norm.bias"}
    with pytest.raises(VocosLoadError, match="do not match"):
        VocosDecoder(VocosConfig(input_channels=8, dim=32, intermediate_dim=48, num_layers=2)).load_weights(
            tiny_codec_dir / "vocal_upsampler.safetensors")


def test_istft_same_padding_inverts_stft():
    from yue.codec.vocos import ISTFT

    n_fft, hop = 64, 16
    x = torch.randn(1, hop * 40)
    win = torch.hann_window(n_fft)
    pad = (n_fft - hop) // 2
    spec = torch.stft(torch.nn.functional.pad(x, (pad, pad)), n_fft, hop, window=win, center=False, return_complex=True)
    y = ISTFT(n_fft, hop, n_fft, "same")(spec)
    assert y.shape[-1] == spec.shape[-1] * hop
    # interior samples are reconstructed exactly (edges lack full window overlap)
    assert torch.allclose(y[:, n_fft:-n_fft], x[:, n_fft : n_fft + y.shape[-1] - 2 * n_fft], atol=1e-4)


def test_postprocess_low_band_replacement():
    from yue.codec.postprocess import biquad, replace_low_freq_with_energy_matched

    sr_lo, sr_hi = 16000, 44100
    t_lo, t_hi = np.arange(sr_lo) / sr_lo, np.arange(sr_hi) / sr_hi
    codec = 0.2 * np.sin(2 * np.pi * 300 * t_lo)  # low band only
    vocos = 0.4 * np.sin(2 * np.pi * 300 * t_hi) + 0.1 * np.sin(2 * np.pi * 9000 * t_hi)
    out = replace_low_freq_with_energy_matched(codec, sr_lo, vocos, sr_hi)
    assert out.shape == (1, sr_hi)
    spec = np.abs(np.fft.rfft(out[0, 4410:]))
    f = np.fft.rfftfreq(sr_hi - 4410, 1 / sr_hi)
    amp = lambda hz: spec[np.argmin(np.abs(f - hz))] * 2 / (sr_hi - 4410)  # noqa: E731
    assert abs(amp(300) - 0.4) < 0.05  # low band: codec's tone rescaled to vocos' low-band energy
    assert 0.05 < amp(9000) < 0.12  # high band: from vocos
    low = biquad(np.sin(2 * np.pi * 15000 * t_hi), "lowpass", sr_hi, 5500)
    assert np.abs(low[1000:]).max() < 0.15


@pytest.mark.slow
def test_released_size_random_weights_convert_and_roundtrip(tmp_path):
    """Released shapes (D=256, HuBERT-base, 12 x 1024, Vocos 1024->512 x 8): convert strictly, encode -> decode."""
    from fake_release import write_fake_release

    from yue.codec.vocos import VocosConfig, VocosDecoder

    cfg = released_config()
    root = write_fake_release(tmp_path / "rel", cfg, vocos=VocosConfig())
    out = convert_release(root, tmp_path / "conv")
    codec = XCodec.from_pretrained(out)
    n = 16000 * 2 + 100
    codes = codec.encode(torch.randn(n) * 0.1)
    assert codes.shape == (1, 12, 101)  # 32100 = 320 * 100 + 100 samples: 101 frames (160-padded branch)
    assert codec.decode(codes).shape == (1, 1, codes.shape[-1] * 320)
    voc = VocosDecoder(VocosConfig.from_yaml(out / "vocos_config.yaml"))
    voc.load_weights(out / "vocal_upsampler.safetensors")
    with torch.no_grad():
        assert voc(codec.get_embed(codes)).shape == (1, codes.shape[-1] * 882)
