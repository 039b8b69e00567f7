"""`restorekit.imresize`: MATLAB-compatible imresize against a loop transcription of MATLAB's code and Set5's MATLAB LR."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from restorekit.core import load_image, shared_data
from restorekit.imresize import imresize, resize_matrix

# ---------------------------------------------------------------- an independent MATLAB transcription (NumPy, loops)

def _k_cubic(x):
    a = abs(x)
    if a <= 1: return 1.5 * a**3 - 2.5 * a**2 + 1
    if a <= 2: return -0.5 * a**3 + 2.5 * a**2 - 4 * a + 2
    return 0.0

def _k_linear(x): return (x + 1) if -1 <= x < 0 else (1 - x) if 0 <= x <= 1 else 0.0
def _k_box(x): return 1.0 if -0.5 <= x < 0.5 else 0.0

_K = {'cubic': (_k_cubic, 4), 'linear': (_k_linear, 2), 'box': (_k_box, 1)}


def contributions(n_in, n_out, scale, kernel='cubic', antialias=True):
    "MATLAB's `contributions`: (indices 0-based, weights), each (n_out, P), all-zero columns removed."
    f, width = _K[kernel]
    if scale < 1 and antialias:
        h, width = (lambda t: scale * f(scale * t)), width / scale
    else:
        h = f
    P = math.ceil(width) + 2
    aux = np.r_[np.arange(1, n_in + 1), np.arange(n_in, 0, -1)]
    idx = np.zeros((n_out, P), np.int64); w = np.zeros((n_out, P))
    for i in range(n_out):
        u = (i + 1) / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        for p in range(P):
            j = left + p
            w[i, p] = h(u - j)
            idx[i, p] = aux[(j - 1) % len(aux)] - 1
        w[i] /= w[i].sum()
    keep = np.any(w != 0, axis=0)
    return idx[:, keep], w[:, keep]


def matlab_imresize(img, scale, kernel='cubic', antialias=True, uint8=False):
    "MATLAB's imresize on an (H, W) array with a scalar or (sh, sw) scale; uint8=True rounds after each pass."
    out = np.asarray(img, np.float64)
    sh, sw = scale if isinstance(scale, tuple) else (scale, scale)
    for dim, s in sorted([(0, sh), (1, sw)], key=lambda t: t[1]):   # stable: rows first on a tie
        n_in = out.shape[dim]
        idx, w = contributions(n_in, math.ceil(n_in * s), s, kernel, antialias)
        a = np.moveaxis(out, dim, 0)
        res = np.stack([(w[i][:, None] * a[idx[i]]).sum(0) for i in range(len(idx))])
        out = np.moveaxis(res, 0, dim)
        if uint8: out = np.clip(np.floor(out + 0.5), 0, 255)
    return out


# ---------------------------------------------------------------- validation

X = torch.rand(2, 3, 37, 53, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize('call, exc, msg', [
    (lambda: imresize(X[0, 0], 0.5), ValueError, '(B,C,H,W) or (C,H,W)'),
    (lambda: imresize(X[None], 0.5), ValueError, '(B,C,H,W) or (C,H,W)'),
    (lambda: imresize(torch.zeros(3, 8, 8, dtype=torch.int64), 0.5), TypeError, 'float tensor'),
    (lambda: imresize(torch.zeros(3, 8, 8, dtype=torch.bool), 0.5), TypeError, 'float tensor'),
    (lambda: imresize(X.numpy(), 0.5), TypeError, 'torch.Tensor'),
    (lambda: imresize(X), ValueError, 'exactly one of scale and size'),
    (lambda: imresize(X, 0.5, size=(4, 4)), ValueError, 'exactly one of scale and size'),
    (lambda: imresize(X, 0), ValueError, 'positive finite'),
    (lambda: imresize(X, -0.5), ValueError, 'positive finite'),
    (lambda: imresize(X, float('nan')), ValueError, 'positive finite'),
    (lambda: imresize(X, float('inf')), ValueError, 'positive finite'),
    (lambda: imresize(X, (0.5, 0)), ValueError, 'positive finite'),
    (lambda: imresize(X, size=(0, 4)), ValueError, 'size must be'),
    (lambda: imresize(X, size=(4, -2)), ValueError, 'size must be'),
    (lambda: imresize(X, size=(4.5, 4)), ValueError, 'size must be'),
    (lambda: imresize(X, size=(1, 2, 3)), ValueError, 'size must be'),
    (lambda: imresize(X, 0.5, kernel='lanczos3'), ValueError, 'kernel must be one of'),
    (lambda: imresize(torch.zeros(1, 3, 0, 5), 0.5), ValueError, 'empty'),
])
def test_bad_arguments(call, exc, msg):
    with pytest.raises(exc, match=msg.replace('(', r'\(').replace(')', r'\)')): call()


# ---------------------------------------------------------------- sizes, invariants, dtypes, gradients

@pytest.mark.parametrize('hw, scale, out', [
    ((37, 53), 0.3, (12, 16)), ((37, 53), 1/3, (13, 18)), ((37, 53), 0.15, (6, 8)), ((37, 53), 1.5, (56, 80)),
    ((10, 100), 0.3, (3, 30)),         # 0.3*10 is exactly 3 in double: ceil gives 3, not 4
    ((288, 100), 1/3, (96, 34)), ((100, 7), 0.15, (15, 2)),
    ((37, 53), 2, (74, 106)), ((37, 53), 3, (111, 159)), ((37, 53), 4, (148, 212)),
    ((37, 53), (0.5, 2), (19, 106)),
])
def test_output_size_is_matlab_ceil(hw, scale, out):
    assert imresize(torch.rand(1, 1, *hw), scale).shape == (1, 1, *out)


def test_size_argument_and_rank3():
    assert imresize(X, size=(20, 70)).shape == (2, 3, 20, 70)
    assert imresize(X[0], 0.5).shape == (3, 19, 27)
    torch.testing.assert_close(imresize(X[0], 0.5), imresize(X, 0.5)[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize('scale', [0.3, 1/3, 0.5, 0.75, 1.7, 2, 3, 4])
def test_constant_stays_constant(scale):
    y = imresize(torch.full((1, 2, 23, 31), 0.7), scale)
    assert (y - 0.7).abs().max() < 1e-6
    y8 = imresize(torch.full((2, 23, 31), 200, dtype=torch.uint8), scale)
    assert y8.dtype == torch.uint8 and (y8 == 200).all()


@pytest.mark.parametrize('scale', [0.25, 1/3, 2, 3, 4])
def test_batch_equals_per_image(scale):
    torch.testing.assert_close(imresize(X, scale), torch.stack([imresize(x, scale) for x in X]), rtol=0, atol=1e-6)


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_upscaling(scale):
    x = X[:1].double()
    y = imresize(x, scale)
    assert y.shape == (1, 3, 37 * scale, 53 * scale)
    np.testing.assert_allclose(y[0, 1].numpy(), matlab_imresize(x[0, 1].numpy(), scale), atol=1e-12)


def test_dtypes():
    y64 = imresize(X.double(), 0.25)
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64.float(), imresize(X, 0.25), rtol=0, atol=1e-6)
    assert imresize(X.half(), 0.5).dtype == torch.float16
    assert imresize(X.bfloat16(), 0.5).dtype == torch.bfloat16
    torch.testing.assert_close(imresize(X.half(), 0.5).float(), imresize(X, 0.5), rtol=0, atol=2e-3)


def test_no_clamping():
    x = X[:1] * 4 - 2   # values in [-2, 2]
    y = imresize(x, 0.5)
    assert y.min() < -1 and y.max() > 1


def test_identity_at_scale_one():
    assert torch.equal(imresize(X, 1.0), X)
    assert torch.equal(imresize(X, size=(37, 53)), X)
    assert imresize(X, 1) is not X
    x8 = (X * 255).to(torch.uint8)
    assert torch.equal(imresize(x8, 1), x8)


def test_gradients_flow():
    x = X[:1, :1, :9, :11].double().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: imresize(t, 0.4), (x,))
    assert torch.autograd.gradcheck(lambda t: imresize(t, (1.5, 0.7), kernel='linear'), (x,))
    y = imresize(X.clone().requires_grad_(), 0.25)
    y.sum().backward()


def test_resize_matrix_properties():
    m = resize_matrix(8, 4, 0.5)
    assert m.shape == (4, 8) and m.dtype == torch.float64
    torch.testing.assert_close(m.sum(1), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.equal(resize_matrix(7, 7, 1.0), torch.eye(7, dtype=torch.float64))
    # MATLAB's halving weights (-0.0117, -0.0352, 0.1133, 0.4336, ...); row 1's first tap mirrors onto pixel 0
    np.testing.assert_allclose(m[1, :7].numpy(), [-0.046875, 0.11328125, 0.43359375, 0.43359375, 0.11328125,
                                                  -0.03515625, -0.01171875], atol=1e-12)


# ---------------------------------------------------------------- against the loop transcription of MATLAB

@pytest.mark.parametrize('kernel', ['cubic', 'linear', 'box'])
@pytest.mark.parametrize('antialias', [True, False])
@pytest.mark.parametrize('scale', [0.5, 1/3, 0.3, 0.75, 1.7, 2, 3, (0.6, 2.5), (2.0, 0.25)])
def test_matches_matlab_loop(kernel, antialias, scale):
    img = np.random.default_rng(1).random((7, 9)) * 2 - 0.5
    ours = imresize(torch.from_numpy(img)[None], scale, kernel=kernel, antialias=antialias)[0].numpy()
    np.testing.assert_allclose(ours, matlab_imresize(img, scale, kernel, antialias), atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), sh=st.floats(0.1, 4.0), sw=st.floats(0.1, 4.0),
       kernel=st.sampled_from(['cubic', 'linear', 'box']), aa=st.booleans(), seed=st.integers(0, 2**16))
def test_matches_matlab_loop_property(h, w, sh, sw, kernel, aa, seed):
    img = np.random.default_rng(seed).random((h, w))
    ours = imresize(torch.from_numpy(img)[None], (sh, sw), kernel=kernel, antialias=aa)[0].numpy()
    np.testing.assert_allclose(ours, matlab_imresize(img, (sh, sw), kernel, aa), atol=1e-10)


@pytest.mark.parametrize('scale', [0.5, 1/3, 0.3, 0.25, 2, 3, (0.5, 0.3), (0.3, 0.5)])
def test_uint8_path_matches_matlab_loop(scale):
    img = np.random.default_rng(2).integers(0, 256, (13, 17)).astype(np.uint8)
    ours = imresize(torch.from_numpy(img)[None], scale)[0]
    assert ours.dtype == torch.uint8
    np.testing.assert_array_equal(ours.numpy(), matlab_imresize(img, scale, uint8=True))


def test_interior_equals_torch_antialiased_bicubic():
    "PyTorch's antialiased bicubic uses the same a=-0.5 stretched kernel; only the border handling differs."
    x = torch.rand(1, 3, 64, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for s in (0.25, 0.5, 2, 3):
        b = 3 if s < 1 else 3 * s
        ours = imresize(x, s)[..., b:-b, b:-b]
        ref = F.interpolate(x, scale_factor=s, mode='bicubic', antialias=True, align_corners=False)[..., b:-b, b:-b]
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_cuda_matches_cpu():
    for x in (X, (X * 255).to(torch.uint8)):
        for s in (0.25, 1/3, 2):
            y = imresize(x.cuda(), s)
            assert y.device.type == 'cuda' and y.dtype == x.dtype
            torch.testing.assert_close(y.cpu().float(), imresize(x, s).float(), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- against MATLAB's own output (Set5 LR_bicubic)

SET5 = shared_data() / 'Set5' if shared_data() is not None else None


@pytest.mark.skipif(SET5 is None or not (SET5 / 'HR').is_dir(), reason='shared Set5 data (MATLAB bicubic LR) not found')
@pytest.mark.parametrize('s', [2, 3, 4])
def test_set5_matches_matlab(s):
    n = eq = 0; mx = 0; n_eq_float = 0
    names = sorted(p.stem for p in (SET5 / 'HR').glob('*.png'))
    assert len(names) == 5
    for name in names:
        lr = (load_image(SET5 / 'LR_bicubic' / f'X{s}' / f'{name}x{s}.png') * 255).round()
        hr = load_image(SET5 / 'HR' / f'{name}.png')[:, :lr.shape[1] * s, :lr.shape[2] * s]   # mod-crop (top-left)
        ours = imresize((hr * 255).round().to(torch.uint8), 1 / s)          # MATLAB's uint8 path
        assert ours.shape == lr.shape
        d = (ours.double() - lr).abs()
        n += d.numel(); eq += int((d == 0).sum()); mx = max(mx, int(d.max()))
        ours_f = (imresize(hr, 1 / s) * 255).round().clamp(0, 255)          # float path, rounded once
        n_eq_float += int((ours_f.double() == lr).sum())
    pct = 100 * eq / n
    assert pct >= 99.9 and mx <= 1, (s, pct, mx)
    assert pct == 100.0 and mx == 0, (s, pct, mx)          # measured: bit-exact at x2, x3 and x4
    assert 80 < 100 * n_eq_float / n < 95                   # the float path misses MATLAB's intermediate rounding
