"""`restorekit.inference`: tiled restoring.

Seam tests (tiled == untiled to 1e-5 in float32 when overlap >= 2*rf with rf=receptive_field, or >= 4*rf with the
default margin) for every blend, several tile/overlap pairs, odd sizes, images smaller than a tile, batches and scales
1-4 and 8; a failing case with too small an overlap; the receptive field of models with a known one; weights that sum
to one; OOM back-off with a fake CUDA out-of-memory error; gray/RGBA handling and file round trips (16-bit, gray,
alpha, overwrite refusal); and a hypothesis property test over random sizes and tiles.
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st, HealthCheck

from restorekit.core import load_image, save_image
from restorekit.imresize import imresize
from restorekit.inference import (BLENDS, LUMA_BT601, axis_weights, infer_scale, receptive_field, restore, restore_image,
                                  tile_layout, upscale_file)
from restorekit.models import create_model

torch.set_num_threads(1)


def _edsr(s): return create_model('edsr_baseline', s, n_feats=8, n_blocks=2, seed=0).eval()


def _ps8():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 3 * 64, 3, padding=1), nn.PixelShuffle(8)).eval()


def _near2():
    torch.manual_seed(0)
    return nn.Sequential(nn.Upsample(scale_factor=2, mode='nearest'), nn.Conv2d(3, 3, 3, padding=1)).eval()


MODELS = {'edsr1': (_edsr(1), 1), 'edsr2': (_edsr(2), 2), 'edsr3': (_edsr(3), 3), 'edsr4': (_edsr(4), 4),
          'ps8': (_ps8(), 8), 'near2': (_near2(), 2)}
RF = {k: receptive_field(m) for k, (m, _) in MODELS.items()}


def _img(*shape, seed=0): return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_receptive_field_known():
    assert RF['ps8'] == 3 and RF['near2'] == 1 and RF['edsr1'] == 7
    three = nn.Sequential(*[nn.Conv2d(3, 3, 3, padding=1) for _ in range(3)])
    assert receptive_field(three) == 3
    assert receptive_field(nn.Conv2d(3, 3, 5, padding=2)) == 2


def test_infer_scale():
    assert [infer_scale(m) for m, _ in MODELS.values()] == [s for _, s in MODELS.values()]


@pytest.mark.parametrize('name', list(MODELS))
@pytest.mark.parametrize('blend', BLENDS)
def test_seamless(name, blend):
    m, s = MODELS[name]
    r = RF[name]
    x = _img(3, 67, 45)
    ref = restore(m, x, tile=None)
    assert ref.shape == (3, 67 * s, 45 * s) and ref.dtype == torch.float32
    for tile, ov in ((2 * r + 16, 2 * r), (40, 2 * r + 2), (4 * r + 8, 2 * r + 1)):
        y = restore(m, x, tile=tile, overlap=ov, blend=blend, rf=r)
        assert (y - ref).abs().max().item() <= 1e-5, (tile, ov)


def test_default_margin_rule():
    m, _ = MODELS['edsr2']; r = RF['edsr2']
    x = _img(3, 90, 100, seed=3)
    assert (restore(m, x, tile=8 * r, overlap=4 * r) - restore(m, x, tile=None)).abs().max() <= 1e-5


def test_too_small_overlap_is_not_exact():
    m, _ = MODELS['edsr2']
    x = _img(3, 67, 45)
    ref = restore(m, x, tile=None)
    for blend in BLENDS:
        assert (restore(m, x, tile=40, overlap=2, blend=blend, rf=0) - ref).abs().max() > 1e-3
    with pytest.warns(UserWarning, match='cannot be exact'):
        restore(m, x, tile=40, overlap=4, rf=RF['edsr2'])


def test_small_image_and_batch():
    m, _ = MODELS['edsr2']; r = RF['edsr2']
    x = _img(3, 20, 30)
    assert torch.equal(restore(m, x, tile=64), restore(m, x, tile=None))
    xb = _img(3, 3, 50, 61, seed=1)
    y = restore(m, xb, tile=32, overlap=2 * r, rf=r, batch_tiles=3)
    assert y.shape == (3, 3, 100, 122)
    assert (y - restore(m, xb, tile=None)).abs().max() <= 1e-5


def test_weights_sum_to_one():
    for n, t, ov, mg, s in [(67, 24, 8, 2, 1), (1024, 256, 16, 4, 2), (45, 20, 10, 5, 3), (100, 40, 20, 0, 8), (257, 256, 32, 8, 2)]:
        for blend in BLENDS:
            starts, side, ws = axis_weights(n, t, ov, mg, blend, s)
            assert side <= t and starts[0] == 0 and starts[-1] + side == n
            tot = torch.zeros(n * s, dtype=torch.float64)
            for p, w in zip(starts, ws): tot[p * s:(p + side) * s] += w
            assert torch.allclose(tot, torch.ones_like(tot), atol=1e-12)


def test_layout_overlap():
    for n in range(30, 300, 7):
        starts, t = tile_layout(n, 32, 8)
        assert t <= 32 and starts[-1] + t == n
        assert all(starts[i] + t - starts[i + 1] >= 8 for i in range(len(starts) - 1))


class OOMAbove(nn.Module):
    def __init__(self, m, n): super().__init__(); self.m, self.n = m, n
    def forward(self, x):
        if x.shape[-1] * x.shape[-2] > self.n: raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 1 GiB')
        return self.m(x)


def test_oom_backoff():
    m, _ = MODELS['edsr2']; r = RF['edsr2']
    x = _img(3, 150, 130, seed=2)
    ref = restore(m, x, tile=None)
    with pytest.warns(RuntimeWarning, match='tile=64'):
        y = restore(OOMAbove(m, 70 * 70), x, tile=128, overlap=2 * r, rf=r)
    assert (y - ref).abs().max() <= 1e-5
    with pytest.warns(RuntimeWarning, match='tile=75'):
        y = restore(OOMAbove(m, 70 * 70), x, tile=None, overlap=2 * r, rf=r)
    assert (y - ref).abs().max() <= 1e-5
    with pytest.raises(RuntimeError, match='smallest allowed'), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        restore(OOMAbove(m, 10), x, tile=64, overlap=16, scale=2)


def test_auto_tile():
    m, _ = MODELS['edsr2']; r = RF['edsr2']
    x = _img(3, 67, 45)
    y = restore(m, x, tile='auto', memory_budget=2 * 2**20, overlap=2 * r, rf=r)
    assert (y - restore(m, x, tile=None)).abs().max() <= 1e-5


def test_errors():
    m, _ = MODELS['edsr2']
    x = _img(3, 67, 45)
    with pytest.raises(ValueError, match='more than half'): restore(m, x, tile=16, overlap=10)
    with pytest.raises(ValueError, match='blend must be'): restore(m, x, blend='gauss')
    with pytest.raises(TypeError, match='divide uint8'): restore(m, (x * 255).byte())
    with pytest.raises(ValueError, match='pass the right scale'): restore(m, x, scale=3)
    with pytest.raises(ValueError, match='tile must be'): restore(m, x, tile=-3)


def test_restore_image_gray_rgba():
    m, _ = MODELS['edsr2']; r = RF['edsr2']
    g = _img(1, 30, 40, seed=3)
    yg = restore_image(m, g)
    assert yg.shape == (1, 60, 80)
    luma = (restore(m, g.expand(3, -1, -1)) * torch.tensor(LUMA_BT601).view(3, 1, 1)).sum(0, keepdim=True)
    assert torch.allclose(yg, luma, atol=1e-6)
    rgba = _img(4, 30, 40, seed=4)
    ya = restore_image(m, rgba, tile=32, overlap=16, rf=r)
    assert ya.shape == (4, 60, 80)
    assert torch.allclose(ya[3], imresize(rgba[3:], scale=2)[0].clamp(0, 1), atol=1e-6)
    with pytest.raises(ValueError, match='4 \\(RGBA\\)'): restore_image(m, _img(2, 8, 8))


@pytest.mark.parametrize('name,C,bits', [('rgb16.png', 3, 16), ('gray.png', 1, 8), ('rgba.png', 4, 8),
                                          ('gray16.png', 1, 16), ('rgba16.png', 4, 16)])
def test_upscale_file(tmp_path, name, C, bits):
    m, _ = MODELS['edsr2']
    src = tmp_path / name
    save_image(_img(C, 20, 30, seed=C), src, bits=bits)
    out = upscale_file(m, src, tmp_path / f'out_{name}', tile=16, overlap=4)
    img, info = load_image(out, mode='RGBA', with_info=True)
    assert info['size'] == (60, 40) and info['bits'] == bits
    assert info['mode'][0] in 'LI' if C == 1 else not info['mode'].startswith(('L', 'I'))
    assert ('A' in info['mode']) == (C == 4)
    with pytest.raises(FileExistsError, match='overwrite=True'): upscale_file(m, src, out)
    upscale_file(m, src, out, overwrite=True)
    with pytest.raises(ValueError, match='source file'): upscale_file(m, src, src, overwrite=True)
    assert load_image(upscale_file(m, src, tmp_path / 'x.jpg'), with_info=True)[1]['bits'] == 8


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(8, 80), w=st.integers(8, 80), extra=st.integers(0, 30), blend=st.sampled_from(BLENDS),
       name=st.sampled_from(['edsr2', 'ps8', 'near2']))
def test_property_tiled_equals_untiled(h, w, extra, blend, name):
    m, _ = MODELS[name]; r = RF[name]
    ov = 2 * r + extra % 5
    tile = 2 * ov + extra
    x = _img(3, h, w, seed=h * 100 + w)
    assert (restore(m, x, tile=tile, overlap=ov, blend=blend, rf=r) - restore(m, x, tile=None)).abs().max() <= 1e-5
