"""Codec and upsampler checked against references written here from the spec, not against the code they test.

- ``XCodec.encode`` / ``decode``: the spec's composition (yue.md §1.1: HuBERT hidden states averaged over all layers
  after 160 samples of padding per side, RepCodec semantic encoder, concat [acoustic ; semantic], ``fc_prior``,
  residual nearest-neighbour quantisation; decode = sum of codebook vectors -> ``fc_post2`` -> DAC decoder) written
  out with plain tensor ops over the submodules. The wrapper calls ``XcodecModel.encode``; this test never does.
- Vocos: the fixture's decoders are written from the published ``vocos`` layout key by key
  (``fake_release.released_vocos_state_dict``), and the forward pass is recomputed here with ``torch.nn.functional``
  and a NumPy overlap-add, so neither the weights nor the reference come from ``yue.codec.vocos``.
"""

import numpy as np
import torch
import torch.nn.functional as F


def _spec_features(model, x: torch.Tensor) -> torch.Tensor:
    """Pre-quantisation features ``[B, T, D + S]`` of a hop-aligned clip ``x [B, 1, N]`` (spec §1.1)."""
    hs = model.semantic_model(F.pad(x[:, 0], (160, 160)), output_hidden_states=True).hidden_states
    sem = torch.stack(hs, dim=1).mean(dim=1)  # average over ALL hidden states, embedding output included
    sem = model.encoder_semantic(sem.transpose(1, 2))  # [B, S, T]
    acoustic = model.acoustic_encoder(x)  # hop-aligned: the bare clip already gives T frames
    assert acoustic.shape[-1] == sem.shape[-1]
    return model.fc(torch.cat([acoustic, sem], dim=1).transpose(1, 2))


def test_encode_agrees_with_the_spec_composition(tiny_codec):
    torch.manual_seed(0)
    x = torch.randn(1, 1, 320 * 40) * 0.1
    codes = tiny_codec.encode(x)[0]  # [12, 40]
    with torch.no_grad():
        residual = _spec_features(tiny_codec.model, x)[0]  # [40, D + S]
    exact = 0
    for k, q in enumerate(tiny_codec.model.quantizer.quantizers):  # residual VQ, teacher-forced on the codes
        table = q.codebook.embed  # [1024, D + S]
        dist = torch.cdist(residual.double(), table.double())  # [40, 1024], computed differently from the model
        best = dist.min(dim=1).values
        chosen = dist.gather(1, codes[k][:, None]).squeeze(1)
        # the code is the nearest vector; a different pick is only allowed on a float near-tie
        assert torch.all(chosen <= best + 1e-4 * (1 + best)), (k, (chosen - best).max())
        exact += int((dist.argmin(dim=1) == codes[k]).sum())
        residual = residual - table[codes[k]]
    assert exact >= 0.99 * codes.numel()


def test_decode_agrees_with_the_spec_composition(tiny_codec):
    codes = torch.from_numpy(np.random.default_rng(1).integers(0, 1024, (1, 12, 9)))
    model = tiny_codec.model
    with torch.no_grad():
        emb = sum(q.codebook.embed[codes[0, k]] for k, q in enumerate(model.quantizer.quantizers))  # [T, D + S]
        ref = model.acoustic_decoder(model.fc2(emb)[None].transpose(1, 2))  # fc_post2 -> DAC decoder
        ours = tiny_codec.decode(codes)
        embed = tiny_codec.get_embed(codes)
    assert ours.shape == ref.shape == (1, 1, 9 * 320)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.allclose(embed[0], emb.T, atol=1e-5)


def _vocos_reference(sd: dict, x: torch.Tensor, num_layers: int, hop: int) -> np.ndarray:
    """Vocos forward from the published structure: ``x [1, C, T]`` -> ``[T * hop]`` audio ("same" padding)."""
    dim = sd["backbone.embed.bias"].shape[0]

    def ln(h, name):
        return F.layer_norm(h, (dim,), sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)

    h = F.conv1d(x, sd["backbone.embed.weight"], sd["backbone.embed.bias"], padding=3)
    h = ln(h.transpose(1, 2), "backbone.norm").transpose(1, 2)
    for i in range(num_layers):
        p = f"backbone.convnext.{i}"
        y = F.conv1d(h, sd[f"{p}.dwconv.weight"], sd[f"{p}.dwconv.bias"], padding=3, groups=dim).transpose(1, 2)
        y = F.linear(F.gelu(F.linear(ln(y, f"{p}.norm"), sd[f"{p}.pwconv1.weight"], sd[f"{p}.pwconv1.bias"])),
                     sd[f"{p}.pwconv2.weight"], sd[f"{p}.pwconv2.bias"])  # fmt: skip
        h = h + (sd[f"{p}.gamma"] * y).transpose(1, 2)
    h = ln(h.transpose(1, 2), "backbone.final_layer_norm")
    out = F.linear(h, sd["head.out.weight"], sd["head.out.bias"])[0].double().numpy()  # [T, n_fft + 2]
    mag, phase = np.split(out, 2, axis=1)
    spec = np.minimum(np.exp(mag), 100.0) * np.exp(1j * phase)  # [T, n_fft/2 + 1]
    win = sd["head.istft.window"].double().numpy()
    n_fft = win.shape[0]
    t = spec.shape[0]
    total = (t - 1) * hop + n_fft
    y, env = np.zeros(total), np.zeros(total)
    for j in range(t):  # overlap-add of windowed frames, normalised by the summed squared window
        y[j * hop : j * hop + n_fft] += np.fft.irfft(spec[j], n_fft) * win
        env[j * hop : j * hop + n_fft] += win**2
    pad = (n_fft - hop) // 2  # "same": drop half a window's overhang per side (where the envelope reaches 0)
    return y[pad : total - pad] / env[pad : total - pad]


def test_vocos_matches_the_published_layout_and_forward(tiny_release, tiny_codec_dir):
    from yue.codec.vocos import VocosConfig, VocosDecoder

    released = torch.load(tiny_release / "decoders" / "decoder_131000.pth", weights_only=True)
    cfg = VocosConfig.from_yaml(tiny_codec_dir / "vocos_config.yaml")
    voc = VocosDecoder(cfg).load_weights(tiny_release / "decoders" / "decoder_131000.pth").eval()  # strict
    assert set(voc.state_dict()) == set(released)
    x = torch.randn(1, cfg.input_channels, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = voc(x)[0].double().numpy()
        ref = _vocos_reference(released, x, cfg.num_layers, cfg.hop_length)
    assert ours.shape == ref.shape == (12 * cfg.hop_length,)
    assert np.allclose(ours, ref, atol=1e-4 * max(1.0, np.abs(ref).max()))
