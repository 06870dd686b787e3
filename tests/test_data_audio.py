"""Audio: µ-law, WAV reading, resampling, the preparers and the WAV writer."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import float_wav_bytes, make_deb, make_wav_dir, tone, wav_bytes

from sparse_transformer.data import (
    ByteDataset,
    load_meta,
    mu_law_decode,
    mu_law_encode,
    prepare,
    read_wav,
    resample,
    write_wav,
)


def test_mu_law_round_trip_error_bound() -> None:
    # Stated bound (see mu_law_encode): |x - dec(enc(x))| <= (1 + 255|x|)/255 * (256**(1/255) - 1)
    #                                                     ~= 0.022 |x| + 8.6e-5.
    x = np.concatenate([np.linspace(-1, 1, 200_001), [0.0, 1e-6, -1e-6, 0.5, -0.5]])
    err = np.abs(x - mu_law_decode(mu_law_encode(x)))
    bound = (1 + 255 * np.abs(x)) / 255 * (256 ** (1 / 255) - 1) + 1e-6
    print(f"mu-law max abs err {err.max():.3e}, max err/bound {(err / bound).max():.3f}")
    assert np.all(err <= bound)
    assert np.all(err[np.abs(x) < 0.01] < 3e-4)  # quiet samples are reproduced finely


def test_mu_law_codes() -> None:
    q = mu_law_encode(np.array([-1.0, 0.0, 1.0, -5.0, 5.0]))
    assert q.dtype == np.uint8 and q.tolist() == [0, 128, 255, 0, 255]  # clipped to [-1, 1]
    codes = np.arange(256, dtype=np.uint8)
    assert np.array_equal(mu_law_encode(mu_law_decode(codes)), codes)  # decode is a right inverse
    dec = mu_law_decode(codes)
    assert dec.dtype == np.float32 and np.all(np.diff(dec) > 0) and dec[0] == -1 and dec[-1] == 1


@pytest.mark.parametrize(("width", "channels"), [(1, 1), (2, 1), (2, 2), (1, 3)])
def test_read_wav_formats(width: int, channels: int) -> None:
    x = tone(500, 8000, amp=0.6)
    got, rate = read_wav(wav_bytes(x, 8000, width=width, channels=channels))
    assert rate == 8000 and got.shape == (500,) and got.dtype == np.float32
    tol = 0.5 / 128 if width == 1 else 0.5 / 32768  # half a quantisation step
    assert np.max(np.abs(got - x)) <= tol + 1e-6


def test_read_wav_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"x.wav: not a readable PCM WAV file \(IEEE float"):
        read_wav(float_wav_bytes(), name="x.wav")
    with pytest.raises(ValueError, match="not a readable PCM WAV file"):
        read_wav(b"this is not a wav file at all", name="y.wav")
    good = wav_bytes(tone(1000, 8000), 8000)
    with pytest.raises(
        ValueError, match=r"truncated WAV data: header says 1,000 frames, found 900"
    ):
        read_wav(good[:-200], name="z.wav")
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.wav"):
        read_wav(p)


def test_resample_tone_and_lengths() -> None:
    x = tone(4800, 48000, freq=440.0, amp=0.8)
    y = resample(x, 48000, 12000)
    assert y.shape == (1200,)
    ref = tone(1200, 12000, freq=440.0, amp=0.8)
    mid = slice(100, -100)  # edges see the zero padding
    err = np.max(np.abs(y[mid] - ref[mid]))
    print(f"48k->12k tone max err {err:.2e}")
    assert err < 2e-3
    up = resample(ref, 12000, 16000)
    assert up.shape == (1600,)
    assert np.max(np.abs(up[150:-150] - tone(1600, 16000, 440.0, 0.8)[150:-150])) < 2e-3
    # a tone above the new Nyquist frequency is removed, not aliased
    hi = resample(tone(8000, 16000, freq=6000.0), 16000, 8000)
    assert np.max(np.abs(hi[200:-200])) < 0.02
    assert np.array_equal(resample(x, 8000, 8000), x)
    assert resample(np.zeros(7, np.float32), 3, 2).shape == (5,)  # ceil(7 * 2 / 3)
    with pytest.raises(ValueError, match="sample rates must be positive"):
        resample(x, 0, 8000)


def test_audio_folder_round_trip(tmp_path: Path) -> None:
    folder = make_wav_dir(tmp_path / "wavs")
    d = prepare("audio", tmp_path / "data", path=folder, sample_rate=8000, progress=False)
    meta = load_meta(d)
    assert meta["kind"] == "audio" and meta["sample_rate"] == 8000
    assert meta["encoding"] == "mu-law-8" and meta["split_by"] == "files"
    # 3 files -> one per split; all resampled to 8 kHz: 800, 800, 800 samples
    assert sorted(meta["splits"].values()) == [800, 800, 800]
    assert sorted(f for fs in meta["files"].values() for f in fs) == [
        "a_8bit.wav", "b_stereo.wav", "nested/c.WAV",
    ]  # fmt: skip
    ds = ByteDataset(d, "train")
    x, y = ds.get_batch(2, 64, torch.Generator().manual_seed(0))
    assert x.shape == (2, 64) and torch.equal(x[:, 1:], y[:, :-1])
    # writer: decode back to a playable WAV
    out = write_wav(np.asarray(ds.data), meta["sample_rate"], tmp_path / "out.wav")
    with wave.open(str(out)) as w:
        assert (w.getframerate(), w.getnframes(), w.getsampwidth(), w.getnchannels()) == (
            8000, len(ds), 2, 1,
        )  # fmt: skip
    back, _ = read_wav(out)
    src_file = meta["files"]["train"][0]
    src, rate = read_wav(folder / src_file)
    ref = resample(src, rate, 8000)
    # round trip error is the mu-law bound plus 16-bit rounding
    assert np.max(np.abs(back - ref)) <= 0.022 * np.max(np.abs(ref)) + 1e-3


def test_audio_few_files_split_by_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "x.wav").write_bytes(wav_bytes(tone(2000, 8000), 8000))
    d = prepare("audio", tmp_path / "data", path=folder, sample_rate=4000, progress=False)
    meta = load_meta(d)
    assert meta["split_by"] == "bytes" and meta["splits"] == {"train": 900, "val": 50, "test": 50}
    q = np.concatenate([np.fromfile(d / f"{s}.bin", np.uint8) for s in ("train", "val", "test")])
    src, _ = read_wav(folder / "x.wav")
    assert np.array_equal(q, mu_law_encode(np.clip(resample(src, 8000, 4000), -1, 1)))


def test_audio_bad_file_is_named(tmp_path: Path) -> None:
    folder = make_wav_dir(tmp_path / "wavs")
    (folder / "zz_float.wav").write_bytes(float_wav_bytes())
    with pytest.raises(ValueError, match=r"zz_float.wav: not a readable PCM WAV file \(IEEE float"):
        prepare("audio", tmp_path / "data", path=folder, progress=False)
    with pytest.raises(ValueError, match="no .wav files"):
        prepare("audio", tmp_path / "data", path=tmp_path / "data", progress=False)


def test_moh_music_from_fake_deb(tmp_path: Path) -> None:
    base = "usr/share/asterisk/moh/"
    files = {base + f"track{i}.wav": wav_bytes(tone(400 + 100 * i, 8000, 200.0 * (i + 1)), 8000)
             for i in range(5)}  # fmt: skip
    files["usr/share/doc/asterisk-moh-opsound-wav/copyright"] = b"CC BY-SA 3.0"
    deb = make_deb(tmp_path, "asterisk-moh-opsound-wav", files)
    d = prepare("moh-music", tmp_path / "data", fetch=lambda p, dest: deb, progress=False)
    meta = load_meta(d)
    assert meta["sample_rate"] == 8000 and meta["licence"].startswith("CC BY-SA 3.0")
    assert {len(v) for v in meta["files"].values()} == {3, 1}
    assert sum(meta["splits"].values()) == sum(400 + 100 * i for i in range(5))
    d2 = prepare("moh-music", tmp_path / "data", path=deb, sample_rate=4000, out_name="m4",
                 progress=False)  # fmt: skip
    assert sum(load_meta(d2)["splits"].values()) == sum(200 + 50 * i for i in range(5))


def test_write_wav_validates(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="1-D uint8"):
        write_wav(np.zeros((2, 3), np.uint8), 8000, tmp_path / "a.wav")
    with pytest.raises(ValueError, match="sample_rate"):
        write_wav(np.zeros(3, np.uint8), 0, tmp_path / "a.wav")
    assert not (tmp_path / "a.wav").exists()


def test_audio_of_empty_wavs_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "wavs"
    folder.mkdir()
    for k in range(4):
        (folder / f"{k}.wav").write_bytes(wav_bytes(np.zeros(0, np.float32), 8000))
    with pytest.raises(ValueError, match=r"no data to train on \(0 bytes after parsing\)"):
        prepare("audio", tmp_path / "data", path=folder, progress=False)
    assert not (tmp_path / "data" / "audio").exists()
