"""media.py (and generate with a start token): whole images, completions, the completion grid and the writers."""

import wave

import numpy as np
import pytest
import torch

from sparse_transformer.media import (
    HIDDEN_GREY,
    complete_images,
    completion_grid,
    sample_images,
    write_audio_samples,
    write_completions,
    write_image_samples,
)
from sparse_transformer.model import ModelConfig, SparseTransformer
from sparse_transformer.sample import generate

SHAPE = (4, 3, 2)  # H, W, C: 24 bytes per image


@pytest.fixture(autouse=True)
def _one_thread():
    """Token-at-a-time steps of a tiny model are far faster on one thread on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def image_model(shape=SHAPE, seed=0) -> SparseTransformer:
    """A tiny image model with random (not zero) output weights, so samples depend on the input."""
    h, w, c = shape
    cfg = ModelConfig(
        ctx=h * w * c, n_layer=2, n_head=2, d_model=16, pattern="strided", stride=w * c,
        mode="multihead", data_shape=shape, backend="torch",
    )  # fmt: skip
    torch.manual_seed(seed)
    m = SparseTransformer(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.5)
    return m.eval()


def test_sample_bytes_fills_the_whole_context_and_matches_full_forward():
    m = image_model()
    ctx = m.cfg.ctx
    prompt = torch.tensor([[0], [7]])
    out = generate(m, prompt, ctx, start_token=True, temperature=0, progress=False)  # ctx + 1 tokens
    assert out.shape == (2, ctx + 1) and out[:, 0].tolist() == [0, 7]
    # greedy: every token is the argmax of a full forward pass over the tokens before it
    with torch.no_grad():
        logits = m(out[:, :-1])
    assert torch.equal(out[:, 1:], logits.argmax(-1))
    with pytest.raises(ValueError, match="more than the model's context"):
        generate(m, prompt, ctx + 1, start_token=True, progress=False)


def test_sample_bytes_agrees_with_generate_and_is_seeded():
    m = image_model()
    prompt = torch.tensor([[0, 5, 9]])
    a = generate(m, prompt, 10, start_token=True, temperature=0.8, progress=False,
                 generator=torch.Generator().manual_seed(3))  # fmt: skip
    b = generate(m, prompt, 10, temperature=0.8, progress=False,
                 generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert torch.equal(a, b)
    stats = {}
    c = generate(m, prompt, 10, start_token=True, temperature=0.8, progress=False, stats=stats,
                 generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert torch.equal(a, c)
    assert stats["tokens"] == 10 and stats["batch"] == 1 and stats["tokens_per_s"] > 0


def test_sample_images_shape_and_ctx_check():
    m = image_model()
    imgs = sample_images(m, 3, SHAPE, progress=False, generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (3, *SHAPE) and imgs.dtype == np.uint8
    with pytest.raises(ValueError, match="not the image size 4x4x2"):
        sample_images(m, 1, (4, 4, 2), progress=False)


def test_complete_images_keeps_the_given_rows():
    m = image_model()
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (2, *SHAPE), dtype=np.uint8)
    done = complete_images(m, real, num=3, progress=False,
                           generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert done.shape == (2, 3, *SHAPE)
    for i in range(2):
        for k in range(3):
            np.testing.assert_array_equal(done[i, k, :2], real[i, :2])  # top half: the real one
    assert not np.array_equal(
        done[:, :, 2:], np.broadcast_to(real[:, None, 2:], done[:, :, 2:].shape)
    )
    one_row = complete_images(m, real, rows=1, progress=False)
    np.testing.assert_array_equal(one_row[:, 0, :1], real[:, :1])
    with pytest.raises(ValueError, match="rows must be in"):
        complete_images(m, real, rows=4, progress=False)


def test_completion_grid_layout(tmp_path):
    real = np.full((2, *SHAPE), 10, np.uint8)
    real[1] = 20
    done = np.full((2, 3, *SHAPE), 200, np.uint8)
    tiles = completion_grid(real, done)
    assert tiles.shape == (2 * 5, *SHAPE)
    seen = tiles[0]
    assert (seen[:2] == 10).all() and (seen[2:] == HIDDEN_GREY).all()  # what the model saw
    assert (tiles[1:4] == 200).all() and (tiles[4] == 10).all() and (tiles[9] == 20).all()
    rgb = np.zeros((1, 2, 8, 8, 3), np.uint8)
    path = write_completions(rgb[:, 0], rgb, tmp_path)
    from PIL import Image

    with Image.open(path) as im:  # 4 tiles of 8 px scaled 12x, 2 px apart
        assert im.size == (4 * 96 + 3 * 2, 96) and im.mode == "RGB"


def test_write_image_samples(tmp_path):
    from PIL import Image

    meta = {"kind": "image", "image_shape": [8, 8, 1]}
    samples = [bytes(range(64)), bytes(64), bytes([255] * 64)]
    (path,) = write_image_samples(samples, tmp_path / "out", meta)
    with Image.open(path) as im:
        assert path.name == "image-samples.png" and im.mode == "L"
        assert im.size == (2 * 96 + 2, 2 * 96 + 2)  # 3 tiles in a 2 x 2 grid
        arr = np.asarray(im)
    np.testing.assert_array_equal(arr[:96:12, :96:12], np.arange(64).reshape(8, 8))
    assert (arr[96:98] == 255).all() and (arr[98:, 98:] == 255).all()  # lines, the empty tile
    with pytest.raises(ValueError, match="not H\\*W\\*C"):
        write_image_samples([bytes(63)], tmp_path, meta)
    with pytest.raises(ValueError, match="--out"):
        write_image_samples(samples, None, meta)


def test_write_audio_samples(tmp_path):
    meta = {"kind": "audio", "sample_rate": 8000, "encoding": "mu-law-8"}
    paths = write_audio_samples([bytes([128] * 100), bytes(range(256))], tmp_path, meta)
    assert [p.name for p in paths] == ["audio-sample-0.wav", "audio-sample-1.wav"]
    for p, n in zip(paths, (100, 256), strict=True):
        with wave.open(str(p)) as w:
            assert (w.getframerate(), w.getnframes(), w.getnchannels(), w.getsampwidth()) == (
                8000, n, 1, 2,
            )  # fmt: skip
    with wave.open(str(paths[0])) as w:  # µ-law 128 is silence
        assert max(abs(v) for v in np.frombuffer(w.readframes(100), "<i2")) <= 3
    with pytest.raises(ValueError, match="no sample_rate"):
        write_audio_samples([b"\x80"], tmp_path, {"kind": "audio", "name": "x"})
