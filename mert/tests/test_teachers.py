"""Teachers: k-means codebooks, EnCodec RVQ codes, the nnAudio CQT target (spec §2)."""

import numpy as np
import pytest
import torch

from mert.teachers import (CQTParams, CQTTeacher, EncodecTeacher, KMeansTeacher, TeacherError, frame_features,
                           librosa_cqt)

SR = 24000
SMALL_ENCODEC = {"num_filters": 4, "hidden_size": 16, "codebook_dim": 16, "num_lstm_layers": 1}


def tone(freq, seconds=1.0, sr=SR):
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("kind,dim", [("mfcc", 39), ("logmel", 80), ("chroma", 12)])
def test_frame_features_on_label_frames(kind, dim):
    f = frame_features(tone(440, 0.5), SR, kind)
    assert f.shape == (12000 // 320 + 1, dim) and np.isfinite(f).all()


def test_kmeans_fit_predict_save_load(tmp_path):
    # two pitch classes (A and D#): the chroma codebook must put them in different clusters
    a, d = tone(440.0), tone(622.25)
    teacher = KMeansTeacher(["mfcc", "chroma"], [4, 2], SR).fit([a, d, np.concatenate([d, a])], seed=0)
    labels = teacher(np.concatenate([a, d]))
    n = 48000 // 320 + 1
    assert labels.shape == (2, n) and labels.dtype == np.int64
    assert labels[0].max() < 4 and labels[1].max() < 2
    first, second = labels[1, 5:70], labels[1, 80:145]  # away from the boundary frames
    assert np.bincount(first).argmax() != np.bincount(second).argmax()
    # nearest centroid in the standardised space (brute force peer)
    cb = teacher.codebooks[0]
    z = (frame_features(a, SR, "mfcc") - cb.mean) / cb.std
    ref = ((z[:, None, :] - cb.centers[None]) ** 2).sum(-1).argmin(1)
    assert (cb.predict(frame_features(a, SR, "mfcc")) == ref).all()
    path = teacher.save(tmp_path / "km.npz")
    again = KMeansTeacher.load(path)
    assert (again(np.concatenate([a, d])) == labels).all()
    assert again.kinds == ["mfcc", "chroma"] and again.codebook_sizes == [4, 2]


def test_kmeans_errors(tmp_path):
    with pytest.raises(TeacherError, match="not found"):
        KMeansTeacher.load(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(TeacherError):
        KMeansTeacher.load(tmp_path / "bad.npz")
    with pytest.raises(TeacherError, match="unknown feature"):
        KMeansTeacher(["spectral_flux"], [8])
    with pytest.raises(TeacherError, match="not fitted"):
        KMeansTeacher(["mfcc"], [8])(tone(440))
    with pytest.raises(TeacherError, match="frames"):
        KMeansTeacher(["chroma"], [500]).fit([tone(440, 0.2)])


def test_encodec_needs_checkpoint_or_explicit_flag(tmp_path):
    with pytest.raises(TeacherError, match="allow_random_weights"):
        EncodecTeacher(None)
    with pytest.raises(TeacherError, match="config.json"):
        EncodecTeacher(tmp_path)


def test_encodec_codes_shape_and_local_checkpoint(tmp_path):
    t = EncodecTeacher(None, allow_random_weights=True, config_overrides=SMALL_ENCODEC, seed=0)
    assert t.num_codebooks == 8 and t.codebook_sizes == [1024] * 8  # 6 kbps at 75 Hz, 10 bits per code
    wav = tone(440, 0.5) + 0.05 * np.random.default_rng(0).standard_normal(12000).astype(np.float32)
    codes = t(wav)
    assert codes.shape == (8, -(-12000 // 320)) and codes.min() >= 0 and codes.max() < 1024
    t.model.save_pretrained(tmp_path / "codec")
    loaded = EncodecTeacher(tmp_path / "codec")
    assert (loaded(wav) == codes).all()


def test_cqt_target_shape_peak_and_librosa_peer():
    params = CQTParams()
    assert params.hop_length == 320 and params.bins_per_octave == 48
    cqt = CQTTeacher(params)
    wav = torch.from_numpy(np.stack([tone(440, 0.6), tone(110, 0.6)]))
    out = cqt(wav)
    assert out.shape == (2, 14400 // 320 + 1, 336) and (out >= 0).all()
    expect = [round(48 * np.log2(f / 32.7)) for f in (440, 110)]
    peaks = out[:, 10:35].mean(1).argmax(-1).tolist()
    assert all(abs(p - e) <= 1 for p, e in zip(peaks, expect)), (peaks, expect)
    ref = librosa_cqt(tone(440, 0.6), params)
    assert ref.shape == (46, 336) and abs(int(ref[10:35].mean(0).argmax()) - expect[0]) <= 1


def test_random_encodec_label_cache_feeds_the_dataset(synth_data, tmp_path):
    """teacher.kind=encodec with the explicit test flag: 8 x ceil(N / 320) codes per file, cropped with the audio."""
    from conftest import tiny_overrides
    from mert import prepare
    from mert.data import Collater, PretrainDataset
    from mert.train import CONFIG_DIR, load_train_config

    ov = tiny_overrides(synth_data, tmp_path / "run", tmp_path / "labels", **{
        "teacher.kind": "encodec", "teacher.allow_random_weights": "true", "model.num_codebooks": 8,
        "model.codebook_size": 1024, "teacher.random_encodec_overrides": "{num_filters: 4, hidden_size: 16, codebook_dim: 16, num_lstm_layers: 1}"})
    cfg = load_train_config(CONFIG_DIR / "tiny.yaml", ov)
    rows = prepare.load_rows(cfg.data, "valid")
    store = prepare.ensure_labels(cfg, rows, num_shards=2)
    assert store.codebook_sizes == [1024] * 8 and store.meta["num_shards"] == 2
    assert store.get(0).shape == (8, -(-72000 // 320))
    ds = PretrainDataset(rows, SR, 48000, store)
    batch = Collater()([ds[(i, 3)] for i in range(len(rows))])
    assert batch["input_values"].shape == (4, 48000) and batch["labels"].shape == (4, 8, 150)
    assert int(batch["labels"].max()) < 1024


def test_kmeans_on_model_layer_features(tmp_path):
    """HuBERT-style refit: k-means on hidden states of an exported encoder, aligned to the conv frames."""
    from mert.configuration_mert import MERTConfig
    from mert.modeling_mert import MERTModel
    from mert.teachers import ModelLayerFeatures

    torch.manual_seed(0)
    MERTModel(MERTConfig.preset("tiny")).save_pretrained(tmp_path / "enc")
    feats = ModelLayerFeatures(tmp_path / "enc", layer=1, chunk_s=0.5)
    wav = tone(330, 1.3)
    h = feats(wav)
    # two full chunks (chunk/320 label frames each: the last conv frame is repeated) + the tail's conv frames
    chunk = int(0.5 * SR) // 320 * 320
    tail = len(wav) - 2 * chunk
    assert h.shape == (2 * (chunk // 320) + (tail - 400) // 320 + 1, 64)
    teacher = KMeansTeacher(["model"], [3], SR, str(tmp_path / "enc"), 1)
    teacher._model = feats
    labels = teacher.fit([wav, tone(220, 1.0)])(wav)
    assert labels.shape == (1, len(h)) and labels.max() < 3
    with pytest.raises(TeacherError, match="model_checkpoint"):
        KMeansTeacher(["model"], [3])
