"""`restorekit.degrade`: the Gold degradation engine.

Per-op checks against OpenCV / torchvision / exact references, seeded reproducibility and resumption, the
statistics of the per-sample random choices (from real `Degrader` calls), shapes for every preset and scale, input
and config errors, per-sample variety, MATLAB parity of the bicubic preset on Set5, and the fastai integration.

Statistical rule used throughout: every test draws from a *fixed* seed, so it is deterministic; a distributional
check passes when its p-value (chi-square goodness of fit, exact binomial, or Kolmogorov-Smirnov against the
documented distribution) is > P_MIN = 1e-3. Moment checks on large samples use tolerances of several standard errors,
stated where they are made.
"""
from __future__ import annotations

import itertools
import math
import re

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torchvision.io import decode_jpeg, encode_jpeg

from restorekit.core import load_image, sample_images, shared_data
from restorekit.degrade import (
    PRESETS,
    RESIZE_MODES,
    SCALES,
    Degrader,
    add_correlated_noise,
    add_gaussian_noise,
    add_poisson_noise,
    filter2d,
    gaussian_kernel1d,
    jpeg,
    kernel_support,
    paired_crop,
    preset,
    quantize,
    resize,
    sample_poisson_levels,
    separable_blur,
    usm_sharpen,
)
from restorekit.gold import GoldCallback, gold_validation_set
from restorekit.imresize import imresize
from restorekit.kernels import (
    KERNEL_TYPES,
    BlurConfig,
    pulse_kernels,
    sample_blur_kernels,
)

P_MIN = 1e-3


# ---------------------------------------------------------------- helpers

def smooth(B: int, H: int, W: int, seed: int = 0) -> torch.Tensor:
    "A `(B,3,H,W)` batch of random but smooth images in [0,1] (bilinear upsampling of coarse noise)."
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(B, 3, max(2, H // 8), max(2, W // 8), generator=g)
    return F.interpolate(coarse, size=(H, W), mode='bilinear', align_corners=False).clamp(0, 1)


_PHOTOS = {}


def photo(i: int = 0) -> torch.Tensor:
    "The i-th bundled sample photo as a `(3,H,W)` float tensor in [0,1]."
    if i not in _PHOTOS: _PHOTOS[i] = load_image(sample_images()[i])
    return _PHOTOS[i]


def hwc(x: torch.Tensor) -> np.ndarray:
    "`(3,H,W)` tensor -> float32 HWC array."
    return np.ascontiguousarray(x.permute(1, 2, 0).numpy().astype(np.float32))


def min_side(cfg, mult: int) -> int:
    "Degrader.min_size rounded up to a multiple of `mult`."
    m = Degrader(cfg, seed=0).min_size
    return math.ceil(m / mult) * mult


# ---------------------------------------------------------------- filter2d / kernel_support

def test_filter2d_identity_kernel():
    x = smooth(3, 32, 40)
    torch.testing.assert_close(filter2d(x, pulse_kernels(3, 21)), x, rtol=0, atol=1e-7)
    torch.testing.assert_close(filter2d(x, pulse_kernels(1, 21)[0]), x, rtol=0, atol=1e-7)   # shared (K,K) kernel


@pytest.mark.parametrize('k', [3, 5, 7])
def test_filter2d_box_equals_avg_pool_reflect(k):
    x = torch.rand(2, 3, 30, 37, generator=torch.Generator().manual_seed(k))
    box = torch.zeros(21, 21); c = 10; r = k // 2
    box[c - r:c + r + 1, c - r:c + r + 1] = 1 / k**2                     # box zero-padded to 21x21
    ref = F.avg_pool2d(F.pad(x, (r, r, r, r), mode='reflect'), k, stride=1)
    torch.testing.assert_close(filter2d(x, box), ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(filter2d(x, torch.full((k, k), 1 / k**2)), ref, rtol=0, atol=1e-6)   # unpadded


def test_filter2d_correlates_like_opencv():
    "A single off-centre tap shifts the image (correlation, not convolution); random kernels match cv2.filter2D."
    x = torch.rand(1, 3, 24, 28, generator=torch.Generator().manual_seed(1))
    k = torch.zeros(5, 5); k[2 + 1, 2 + 2] = 1                           # tap at dy=+1, dx=+2
    y = filter2d(x, k)
    torch.testing.assert_close(y[..., 2:-2, 2:-2], x[..., 3:-1, 4:], rtol=0, atol=1e-7)
    ks, _ = sample_blur_kernels(4, generator=torch.Generator().manual_seed(0))
    xs = torch.rand(4, 3, 33, 29, generator=torch.Generator().manual_seed(2))
    ys = filter2d(xs, ks)
    for i in range(4):
        ref = cv2.filter2D(hwc(xs[i]), -1, ks[i].numpy().astype(np.float32), borderType=cv2.BORDER_REFLECT_101)
        np.testing.assert_allclose(hwc(ys[i]), ref, atol=1e-5)


def test_filter2d_per_sample_kernels_go_to_the_right_samples():
    x = smooth(4, 40, 36, seed=3)
    box3 = torch.zeros(21, 21); box3[9:12, 9:12] = 1 / 9
    rnd, _ = sample_blur_kernels(2, generator=torch.Generator().manual_seed(5))
    ks = torch.stack([pulse_kernels(1, 21)[0], rnd[0], box3, rnd[1]])
    y = filter2d(x, ks)
    for i in range(4):
        torch.testing.assert_close(y[i:i + 1], filter2d(x[i:i + 1], ks[i:i + 1]), rtol=0, atol=1e-6)
    torch.testing.assert_close(y[0], x[0], rtol=0, atol=1e-7)
    assert (y[1] - x[1]).abs().max() > 1e-3 and (y[2] - x[2]).abs().max() > 1e-3
    # permuting the batch permutes the output
    p = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(filter2d(x[p], ks[p]), y[p], rtol=0, atol=1e-6)


def test_kernel_support():
    k = torch.zeros(5, 21, 21)
    k[0, 10, 10] = 1                        # pulse: 1
    k[1, 8:13, 8:13] = 1 / 25               # centred 5x5 box: 5
    k[2, 10, 0] = 1                         # a tap at the left border: 21
    k[3, 13, 10] = 1; k[3, 10, 10] = 1      # 3 rows below the centre: 7
    k[4, 9, 12] = 1                         # asymmetric: reach 2 -> 5
    assert kernel_support(k).tolist() == [1, 5, 21, 7, 5]
    assert kernel_support(pulse_kernels(3, 11)).tolist() == [1, 1, 1]


def test_filter2d_errors():
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match='K odd'): filter2d(x, torch.ones(2, 4, 4) / 16)
    with pytest.raises(ValueError, match='B=2'): filter2d(x, torch.ones(3, 3, 3) / 9)
    big = torch.ones(21, 21) / 441
    with pytest.raises(ValueError, match='needs an image larger'): filter2d(torch.rand(1, 3, 8, 30), big)


# ---------------------------------------------------------------- separable blur and USM against OpenCV

def _usm_reference(img: np.ndarray) -> np.ndarray:
    "BasicSR's `usm_sharp` on a float32 HWC image (radius 50 -> 51, weight 0.5, threshold 10)."
    blur = cv2.GaussianBlur(img, (51, 51), 0)
    residual = img - blur
    mask = (np.abs(residual) * 255 > 10).astype(np.float32)
    soft = cv2.GaussianBlur(mask, (51, 51), 0)
    sharp = np.clip(img + 0.5 * residual, 0, 1)
    return soft * sharp + (1 - soft) * img


def _test_images():
    "Random, random-smooth and real photo crops (non-square, some sides not multiples of 8)."
    r = torch.rand(2, 3, 45, 70, generator=torch.Generator().manual_seed(0))
    s = smooth(2, 64, 52, seed=1)
    real = torch.stack([photo(0)[:, 100:196, 150:270], photo(2)[:, 50:146, 60:180]])
    return [r, s, real.contiguous()]


def test_separable_blur_equals_cv2_gaussian_blur():
    g = gaussian_kernel1d(51)
    np.testing.assert_allclose(g.numpy(), cv2.getGaussianKernel(51, 0, cv2.CV_64F)[:, 0])
    for x in _test_images():
        y = separable_blur(x, g)
        for i in range(len(x)):
            np.testing.assert_allclose(hwc(y[i]), cv2.GaussianBlur(hwc(x[i]), (51, 51), 0), atol=1e-5)


def test_usm_sharpen_equals_basicsr_usm_sharp():
    for x in _test_images():
        y = usm_sharpen(x)
        for i in range(len(x)):
            np.testing.assert_allclose(hwc(y[i]), _usm_reference(hwc(x[i])), atol=1e-5)
    # and it does something on a real photo
    x = _test_images()[2]
    assert (usm_sharpen(x) - x).abs().max() > 0.05


# ---------------------------------------------------------------- resize, quantize

@pytest.mark.parametrize('mode', RESIZE_MODES + ('matlab',))
@pytest.mark.parametrize('size', [(20, 30), (80, 33), (41, 41), (1, 7)])
def test_resize_shapes_and_modes(mode, size):
    x = smooth(3, 40, 60)
    y = resize(x, size, mode)
    assert y.shape == (3, 3, *size) and y.dtype == x.dtype
    c = torch.full((2, 3, 40, 60), 0.3)
    torch.testing.assert_close(resize(c, size, mode), torch.full((2, 3, *size), 0.3), rtol=0, atol=1e-5)
    if mode in ('area', 'bilinear'): assert y.min() >= 0 and y.max() <= 1


def test_resize_semantics():
    x = smooth(2, 40, 60)
    assert resize(x, (40, 60), 'bicubic') is x                          # same size: untouched
    torch.testing.assert_close(resize(x, (20, 30), 'area'), F.avg_pool2d(x, 2))
    torch.testing.assert_close(resize(x, (20, 30), 'matlab'), imresize(x, size=(20, 30)))
    torch.testing.assert_close(resize(x, (80, 90), 'bilinear'),
                               F.interpolate(x, size=(80, 90), mode='bilinear', align_corners=False))
    assert resize(x, (0, 0.5), 'area').shape[-2:] == (1, 1)             # sizes clamp to >= 1
    with pytest.raises(ValueError, match='resize mode must be one of'): resize(x, (20, 30), 'lanczos')


def test_quantize():
    x = torch.cat([torch.rand(1000, generator=torch.Generator().manual_seed(0)), torch.tensor([-0.2, 1.3, 0.5 / 255])])
    q = quantize(x)
    lv = q * 255
    torch.testing.assert_close(lv, lv.round(), rtol=0, atol=1e-4)      # on 8-bit levels
    assert q.min() >= 0 and q.max() <= 1
    assert (q[:1000] - x[:1000]).abs().max() <= 0.5 / 255 + 1e-7
    assert q[1000] == 0 and q[1001] == 1
    torch.testing.assert_close(quantize(q), q, rtol=0, atol=0)           # idempotent


# ---------------------------------------------------------------- noise

def test_add_gaussian_noise_std_per_sample_and_gray():
    # 3x128x128 = 49152 values per sample: the relative standard error of a std estimate is ~0.3 %; tolerance 3 %.
    B = 6
    x = torch.full((B, 3, 128, 128), 0.5)
    sigma = torch.tensor([1., 5., 10., 20., 30., 50.])
    gray = torch.tensor([False, True, False, True, False, True])
    g = torch.Generator().manual_seed(0)
    n = (add_gaussian_noise(x, sigma, gray, g, clip=False) - x) * 255
    std = n.flatten(1).std(1)
    torch.testing.assert_close(std, sigma, rtol=0.03, atol=0)
    assert n.flatten(1).mean(1).abs().max() < 0.05 * sigma.max()
    for i in range(B):
        if gray[i]:
            assert torch.equal(n[i, 0], n[i, 1]) and torch.equal(n[i, 0], n[i, 2])
        else:
            c = np.corrcoef(n[i].flatten(1).numpy())
            assert np.abs(c[np.triu_indices(3, 1)]).max() < 0.03        # independent channels (SE ~ 0.008)
    # clip=True keeps [0,1]; a fixed generator reproduces the noise
    y = add_gaussian_noise(x, sigma, gray, torch.Generator().manual_seed(0))
    assert y.min() >= 0 and y.max() <= 1
    torch.testing.assert_close(y, (x + n / 255).clamp(0, 1), rtol=0, atol=1e-6)


def _poisson_batch():
    "Sample 0: a ramp through all 256 levels (v=256) beside a constant 128 block; sample 1: levels {0,100,200} (v=4)."
    x = torch.empty(2, 3, 128, 160)
    ramp = torch.arange(256).float().view(16, 16) / 255
    x[0] = 128 / 255
    x[0, :, :16, :16] = ramp
    x[1] = 100 / 255
    x[1, :, :4, :4] = 0; x[1, :, :4, 4:8] = 200 / 255
    return x


@pytest.mark.parametrize('gray', [False, True])
def test_add_poisson_noise_mean_and_variance(gray):
    # noise = scale * (Poisson(v*q/255)/v - q/255): mean 0, variance scale^2 * (q/255) / v, with v the number of
    # distinct 8-bit levels rounded up to a power of two. ~58 000 values per region (or ~19 000 when gray):
    # the relative standard error of the variance is < 1.5 %; tolerance 6 %; the mean within 5 standard errors.
    x = _poisson_batch()
    scale = torch.tensor([2.0, 0.5])
    g = torch.Generator().manual_seed(1)
    n = add_poisson_noise(x, scale, torch.tensor([gray, gray]), g, clip=False) - x
    for i, (q, v, sl) in enumerate([(128, 256, (slice(16, None), slice(None))), (100, 4, (slice(4, None), slice(None)))]):
        region = n[i][:, sl[0], sl[1]]
        if gray:
            assert torch.equal(region[0], region[1]) and torch.equal(region[0], region[2])
            region = region[0]
        else:
            assert not torch.equal(region[0], region[1])
        vals = region.flatten().double()
        var = scale[i].item() ** 2 * (q / 255) / v
        assert abs(vals.mean().item()) < 5 * math.sqrt(var / len(vals)), (i, vals.mean().item())
        assert vals.var().item() == pytest.approx(var, rel=0.06), (i, vals.var().item(), var)
        # the noisy values sit on the lattice k/v (before scaling)
        k = (vals / scale[i].item() + q / 255) * v
        torch.testing.assert_close(k, k.round(), rtol=0, atol=1e-3)


def test_add_poisson_noise_gray_uses_luma_and_clip():
    x = smooth(4, 48, 48, seed=4)
    gray = torch.tensor([True, False, True, False])
    out = add_poisson_noise(x, torch.ones(4), gray, torch.Generator().manual_seed(0), clip=False)
    n = out - x
    for i in range(4):
        spread = (n[i] - n[i].mean(0)).abs().max().item()     # (x + n) - x is n up to float32 rounding
        assert (spread < 1e-6) == bool(gray[i]), (i, spread)
    y = add_poisson_noise(x, torch.full((4,), 3.0), gray, torch.Generator().manual_seed(0))
    assert y.min() >= 0 and y.max() <= 1


def _pooled(k_max: int, pmf: np.ndarray, n: int, min_expected: float = 50):
    "Bin edges 0..k_max pooled (left to right, tail into the last bin) so every bin expects >= min_expected."
    edges, acc = [0], 0.0
    for k in range(k_max + 1):
        acc += pmf[k] * n
        if acc >= min_expected: edges.append(k + 1); acc = 0.0
    edges[-1] = k_max + 1
    return edges


@pytest.mark.parametrize('level', [1, 10, 64, 128, 255])
def test_sample_poisson_levels_matches_poisson(level):
    # λ = v*q/255 with v = 256. 100 000 draws per level. Chi-square goodness of fit against the exact Poisson pmf
    # and a two-sample chi-square against torch.poisson, bins pooled to expect >= 50 draws (the inverse-CDF table
    # rounds each mass to a multiple of 1/16384, i.e. <= 6 draws per bin here): both p > P_MIN.
    # Moments: mean within 5 standard errors, variance within 3 % (its relative SE is ~0.45 %).
    N, v = 100_000, 256
    lam = v * level / 255
    q = torch.full((N,), float(level))
    ours = sample_poisson_levels(q, v, torch.Generator().manual_seed(level)).numpy()
    ref = torch.poisson(torch.full((N,), lam, dtype=torch.float64), generator=torch.Generator().manual_seed(1000 + level)).numpy()
    assert np.all(ours == np.round(ours)) and ours.min() >= 0
    assert abs(ours.mean() - lam) < 5 * math.sqrt(lam / N)
    assert ours.var() == pytest.approx(lam, rel=0.03)
    k_max = int(max(ours.max(), ref.max(), lam + 12 * math.sqrt(lam) + 20))
    pmf = stats.poisson.pmf(np.arange(k_max + 1), lam)
    edges = _pooled(k_max, pmf, N)
    exp = np.array([pmf[a:b].sum() for a, b in itertools.pairwise(edges)])
    exp[-1] += 1 - pmf.sum()
    o1 = np.histogram(ours, bins=edges)[0]
    o2 = np.histogram(ref, bins=edges)[0]
    assert o1.sum() == N and o2.sum() == N
    p_fit = stats.chisquare(o1, exp / exp.sum() * N).pvalue
    p_two = stats.chi2_contingency(np.stack([o1, o2]))[1]
    assert p_fit > P_MIN and p_two > P_MIN, (level, p_fit, p_two)


def test_sample_poisson_levels_zero_and_mixed_levels():
    q = torch.tensor([0., 0., 0., 255.] * 1000)
    out = sample_poisson_levels(q, 256, torch.Generator().manual_seed(0))
    assert out.shape == q.shape and out.dtype == q.dtype
    assert (out[q == 0] == 0).all()
    assert out[q == 255].mean().item() == pytest.approx(256, rel=0.02)


def test_add_correlated_noise_covariance():
    # The covariance of sample b is U^T diag(d) U (sigma/255)^2 with U a random rotation and d ~ U(0,1)^3.
    # 1) The eigenvalues of each empirical covariance, scaled by (255/sigma)^2, are the drawn d: in [0,1] (with a
    #    5 % estimation margin; 16384 pixels give ~1 % relative error) and KS-uniform on (0,1) over 64 samples x 3.
    # 2) The same covariance generator with a different noise generator gives the same covariance (relative
    #    Frobenius difference < 0.08, ~3 % expected): the noise follows the drawn covariance, not a fresh one.
    # 3) Channels really are correlated: mean |off-diagonal correlation| > 0.1.
    B, sig = 64, 20.0
    x = torch.full((B, 3, 128, 128), 0.5)
    sigma = torch.full((B,), sig)

    def cov_of(noise_seed):
        out = add_correlated_noise(x, sigma, torch.Generator().manual_seed(7), torch.Generator().manual_seed(noise_seed),
                                   clip=False)
        n = ((out - x) * 255 / sig).flatten(2).double()
        n = n - n.mean(-1, keepdim=True)
        return n @ n.transpose(1, 2) / n.shape[-1]
    c1, c2 = cov_of(1), cov_of(2)
    ev = torch.linalg.eigvalsh(c1).flatten().numpy()
    assert ev.min() > -0.05 and ev.max() < 1.05, (ev.min(), ev.max())
    assert stats.kstest(np.clip(ev, 0, 1), 'uniform').pvalue > P_MIN
    rel = (torch.linalg.matrix_norm(c1 - c2) / torch.linalg.matrix_norm(c1)).max().item()
    assert rel < 0.08, rel
    d = torch.sqrt(torch.diagonal(c1, dim1=1, dim2=2))
    corr = c1 / (d[:, :, None] * d[:, None, :])
    off = corr[:, [0, 0, 1], [1, 2, 2]].abs()
    assert off.mean() > 0.1, off.mean()
    y = add_correlated_noise(x, sigma, torch.Generator().manual_seed(7), torch.Generator().manual_seed(1))
    assert y.min() >= 0 and y.max() <= 1


# ---------------------------------------------------------------- jpeg, paired_crop

def test_jpeg_equals_torchvision_round_trip():
    x = torch.stack([photo(0)[:, :72, :88], photo(1)[:, 40:112, 10:98], smooth(1, 72, 88)[0]])
    qs = torch.tensor([12., 55.4, 95.])
    y = jpeg(x, qs)
    assert y.shape == x.shape and y.dtype == x.dtype
    for i, q in enumerate([12, 55, 95]):
        u8 = (x[i] * 255).round().clamp(0, 255).to(torch.uint8)
        ref = decode_jpeg(encode_jpeg(u8, quality=q)).float() / 255
        assert torch.equal(y[i], ref), i


def test_jpeg_quality_ordering():
    x = photo(0)[None, :, 128:256, 128:256].contiguous()
    errs = [((jpeg(x, torch.tensor([float(q)])) - x) ** 2).mean().item() for q in (5, 20, 50, 80, 95)]
    assert all(a > b for a, b in itertools.pairwise(errs)), errs
    # per-sample qualities in one batch
    y = jpeg(torch.cat([x, x]), torch.tensor([10., 90.]))
    assert torch.equal(y[0:1], jpeg(x, torch.tensor([10.]))) and torch.equal(y[1:2], jpeg(x, torch.tensor([90.])))


@pytest.mark.parametrize('scale', [1, 2, 4])
def test_paired_crop_alignment(scale):
    B, h, w = 8, 20, 26
    yy, xx = torch.meshgrid(torch.arange(h * scale).float(), torch.arange(w * scale).float(), indexing='ij')
    hq = torch.stack([yy, xx, torch.zeros_like(yy)])[None].repeat(B, 1, 1, 1)
    hq[:, 2] = torch.arange(B).float().view(B, 1, 1)
    lq = hq[:, :, ::scale, ::scale].clone()          # lq pixel (y, x) <-> hq pixel (y*scale, x*scale)
    size = 8 * scale
    lqc, hqc = paired_crop(lq, hq, size, scale, torch.Generator().manual_seed(0))
    assert lqc.shape == (B, 3, 8, 8) and hqc.shape == (B, 3, size, size)
    assert torch.equal(hqc[:, :, ::scale, ::scale], lqc)
    assert torch.equal(lqc[:, 2, 0, 0], torch.arange(B).float())      # each sample cropped from itself
    pos = {(int(lqc[i, 0, 0, 0]), int(lqc[i, 1, 0, 0])) for i in range(B)}
    assert len(pos) > 1                                               # one position per sample
    assert torch.equal(hqc[:, 0, :, 0] - hqc[:, 0, :1, 0], torch.arange(size).float().expand(B, -1))   # contiguous


def test_paired_crop_errors():
    lq, hq = torch.rand(2, 3, 10, 10), torch.rand(2, 3, 20, 20)
    with pytest.raises(ValueError, match='multiple of scale'): paired_crop(lq, hq, 7, 2)
    with pytest.raises(ValueError, match='not scale'): paired_crop(lq, hq, 8, 4)
    with pytest.raises(ValueError, match='larger than'): paired_crop(lq, hq, 24, 2)


# ---------------------------------------------------------------- reproducibility

def _batch_for(cfg, B=4, seed=0):
    side = min_side(cfg, 8 * cfg.scale)
    return smooth(B, side, side + 8 * cfg.scale, seed=seed)


@pytest.mark.parametrize('name', list(PRESETS))
def test_same_seed_same_output(name):
    cfg = preset(name)
    hr = _batch_for(cfg)
    a = Degrader(cfg, seed=11)(hr, record=True)
    b = Degrader(preset(name), seed=11)(hr.clone(), record=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    c = Degrader(cfg, seed=12)(hr, record=True)
    if name == 'bicubic':     # deterministic: nothing is drawn
        assert torch.equal(a[0], c[0]) and a[2] == c[2]
    else:
        assert not torch.equal(a[0], c[0]) and a[2] != c[2]
    assert torch.equal(a[1], c[1])            # the target does not depend on the seed


@pytest.mark.parametrize('name', ['realesrgan', 'bsrgan', 'jpeg_heavy'])
def test_state_dict_resumes_random_sequence(name):
    cfg = preset(name)
    hr1, hr2 = _batch_for(cfg, seed=1), _batch_for(cfg, seed=2)
    d = Degrader(cfg, seed=5)
    first = d(hr1, record=True)
    state = d.state_dict()
    second = d(hr2, record=True)
    r = Degrader(cfg, seed=999)
    r.load_state_dict(state)
    again = r(hr2, record=True)
    assert torch.equal(second[0], again[0]) and second[2] == again[2]
    assert r.seed == 5
    # the state is a snapshot: using the original degrader afterwards does not change it
    r2 = Degrader(cfg, seed=0); r2.load_state_dict(state)
    assert r2(hr2, record=True)[2] == second[2]
    assert first[2] != second[2]


# ---------------------------------------------------------------- statistics of the per-sample choices (realesrgan)

N_STAT, B_STAT = 10_000, 1_000


# The realesrgan preset with usm=False: the unsharp mask only sharpens the target and draws nothing, so the records
# are exactly the preset's (checked by test_stat_usm_does_not_change_the_draws), at two thirds of the cost.
ESRGAN_STAT = {"usm": False}


def test_stat_usm_does_not_change_the_draws():
    hr = smooth(64, 80, 80, seed=99)
    a = Degrader('realesrgan', seed=2024)(hr, record=True)[2]
    b = Degrader(preset('realesrgan', **ESRGAN_STAT), seed=2024)(hr, record=True)[2]
    assert [{k: v for k, v in r.items() if k != 'usm'} for r in a] == [{k: v for k, v in r.items() if k != 'usm'} for r in b]


@pytest.fixture(scope='module')
def esrgan_records():
    "10 000 records from real `Degrader` calls (realesrgan): 10 batches of 1 000 smooth 80x80 HR crops (scale 4)."
    d = Degrader(preset('realesrgan', **ESRGAN_STAT), seed=2024)
    recs = []
    for i in range(N_STAT // B_STAT):
        lq, _, r = d(smooth(B_STAT, 80, 80, seed=100 + i), record=True)
        assert lq.shape == (B_STAT, 3, 20, 20)
        recs += r
    return recs


def _binom_ok(k, n, p): return stats.binomtest(int(k), int(n), p).pvalue > P_MIN


def _chi2_ok(values, cats, probs):
    obs = np.array([sum(v == c for v in values) for c in cats], float)
    assert obs.sum() == len(values), f"values outside {cats}: {set(values) - set(cats)}"
    p = stats.chisquare(obs, np.asarray(probs, float) * len(values)).pvalue
    return p > P_MIN, (p, obs.tolist())


def _ks_ok(values, lo, hi):
    v = np.asarray(values, float)
    assert v.min() >= lo and v.max() <= hi, (v.min(), v.max(), lo, hi)
    p = stats.kstest(v, 'uniform', args=(lo, hi - lo)).pvalue
    return p > P_MIN, p


def _jpeg_pmf(lo, hi):
    "pmf of round(U(lo, hi)) on lo..hi."
    ks = np.arange(lo, hi + 1)
    return ks, (np.minimum(ks + 0.5, hi) - np.maximum(ks - 0.5, lo)) / (hi - lo)


@pytest.mark.parametrize('stage, probs', [('stage1', (0.2, 0.7, 0.1)), ('stage2', (0.3, 0.4, 0.3))])
def test_stat_resize_direction(esrgan_records, stage, probs):
    ok, info = _chi2_ok([r[f'{stage}.resize'] for r in esrgan_records], ('up', 'down', 'keep'), probs)
    assert ok, info


@pytest.mark.parametrize('key', ['stage1.resize_mode', 'stage2.resize_mode', 'final.resize_mode'])
def test_stat_resize_modes_uniform(esrgan_records, key):
    ok, info = _chi2_ok([r[key] for r in esrgan_records], RESIZE_MODES, [1 / 3] * 3)
    assert ok, info


@pytest.mark.parametrize('stage, up, down, base', [('stage1', (1, 1.5), (0.15, 1), 80), ('stage2', (1, 1.2), (0.3, 1), 20)])
def test_stat_resize_scales(esrgan_records, stage, up, down, base):
    for way, rng in (('up', up), ('down', down)):
        sc = [r[f'{stage}.scale'] for r in esrgan_records if r[f'{stage}.resize'] == way]
        ok, p = _ks_ok(sc, *rng)
        assert ok, (stage, way, p)
    assert all(r[f'{stage}.scale'] == 1.0 for r in esrgan_records if r[f'{stage}.resize'] == 'keep')
    # the recorded size follows from the scale (stage 1: the HR size; stage 2: the LR size)
    assert all(r[f'{stage}.size'] == (max(1, int(base * r[f'{stage}.scale'])),) * 2 for r in esrgan_records)


@pytest.mark.parametrize('stage, sig, pois', [('stage1', (1, 30), (0.05, 3)), ('stage2', (1, 25), (0.05, 2.5))])
def test_stat_noise(esrgan_records, stage, sig, pois):
    kinds = [r[f'{stage}.noise'] for r in esrgan_records]
    assert set(kinds) <= {'gaussian', 'poisson'}                   # noise_prob = 1
    assert _binom_ok(kinds.count('gaussian'), len(kinds), 0.5), kinds.count('gaussian')
    gray = [r[f'{stage}.gray'] for r in esrgan_records if r[f'{stage}.noise'] is not None]
    assert _binom_ok(sum(gray), len(gray), 0.4), sum(gray)
    ok, p = _ks_ok([r[f'{stage}.noise_level'] for r in esrgan_records if r[f'{stage}.noise'] == 'gaussian'], *sig)
    assert ok, p
    ok, p = _ks_ok([r[f'{stage}.noise_level'] for r in esrgan_records if r[f'{stage}.noise'] == 'poisson'], *pois)
    assert ok, p
    # gray is independent of the noise type: 0.4 within each type
    for kind in ('gaussian', 'poisson'):
        g = [r[f'{stage}.gray'] for r in esrgan_records if r[f'{stage}.noise'] == kind]
        assert _binom_ok(sum(g), len(g), 0.4), (kind, sum(g), len(g))


@pytest.mark.parametrize('key', ['stage1.jpeg', 'final.jpeg'])
def test_stat_jpeg_quality(esrgan_records, key):
    q = [r[key] for r in esrgan_records]
    assert all(isinstance(v, int) and 30 <= v <= 95 for v in q)       # jpeg_prob = 1: always compressed
    ks, pmf = _jpeg_pmf(30, 95)
    ok, info = _chi2_ok(q, ks.tolist(), pmf)
    assert ok, info[0]
    assert all(r['final.jpeg2'] is None for r in esrgan_records)     # double_jpeg_prob = 0


def test_stat_blur_order_sinc(esrgan_records):
    n = len(esrgan_records)
    assert n >= 10_000
    assert all(r['stage1.blur'] for r in esrgan_records)              # stage 1 blur_prob = 1
    k = sum(r['stage2.blur'] for r in esrgan_records)
    assert _binom_ok(k, n, 0.8), k
    k = sum(r['final.order'] == 'jpeg_first' for r in esrgan_records)
    assert {r['final.order'] for r in esrgan_records} == {'jpeg_first', 'resize_first'}
    assert _binom_ok(k, n, 0.5), k
    k = sum(r['final.sinc'] for r in esrgan_records)
    assert _binom_ok(k, n, 0.8), k
    sinc = [r for r in esrgan_records if r['final.sinc']]
    ok, p = _ks_ok([r['final.omega_c'] for r in sinc], math.pi / 3, math.pi)
    assert ok, p
    ok, info = _chi2_ok([r['final.sinc_ksize'] for r in sinc], list(range(7, 22, 2)), [1 / 8] * 8)
    assert ok, info
    assert all(r['final.sinc_ksize'] is None and r['final.omega_c'] is None for r in esrgan_records if not r['final.sinc'])


@pytest.mark.parametrize('stage', ['stage1', 'stage2'])
def test_stat_kernel_types(esrgan_records, stage):
    blurred = [r for r in esrgan_records if r[f'{stage}.blur']]
    types = [r[f'{stage}.kernel.type'] for r in blurred]
    assert _binom_ok(types.count('sinc'), len(types), 0.1), types.count('sinc')
    assert all(r[f'{stage}.kernel.sinc'] == (r[f'{stage}.kernel.type'] == 'sinc') for r in blurred)
    ok, info = _chi2_ok([t for t in types if t != 'sinc'], KERNEL_TYPES, BlurConfig().kernel_prob)
    assert ok, info
    ok, info = _chi2_ok([r[f'{stage}.kernel.ksize'] for r in blurred], list(range(7, 22, 2)), [1 / 8] * 8)
    assert ok, info
    hi_sigma = 3.0 if stage == 'stage1' else 1.5
    sx = [r[f'{stage}.kernel.sigma_x'] for r in blurred if r[f'{stage}.kernel.type'] != 'sinc']
    ok, p = _ks_ok(sx, 0.2, hi_sigma)
    assert ok, p
    for r in blurred:
        if r[f'{stage}.kernel.type'] == 'sinc':
            lo = math.pi / 3 if r[f'{stage}.kernel.ksize'] < 13 else math.pi / 5
            assert lo <= r[f'{stage}.kernel.omega_c'] <= math.pi
        elif r[f'{stage}.kernel.type'].endswith('_iso') or r[f'{stage}.kernel.type'] == 'iso':
            assert r[f'{stage}.kernel.sigma_x'] == r[f'{stage}.kernel.sigma_y'] and r[f'{stage}.kernel.theta'] == 0
    assert all(f'{stage}.kernel.type' not in r for r in esrgan_records if not r[f'{stage}.blur'])


def test_stat_choices_are_independent_across_steps(esrgan_records):
    "The stage-1 resize direction does not depend on the final order (chi-square test of independence)."
    tab = np.zeros((3, 2))
    for r in esrgan_records:
        tab[('up', 'down', 'keep').index(r['stage1.resize']), r['final.order'] == 'jpeg_first'] += 1
    assert stats.chi2_contingency(tab)[1] > P_MIN


# ---------------------------------------------------------------- shapes

_SHAPE_CASES = [(p, s) for p in PRESETS for s in SCALES]


@pytest.mark.parametrize('name, scale', _SHAPE_CASES)
def test_shapes_every_preset_and_scale(name, scale):
    cfg = preset(name, scale=scale)
    d = Degrader(cfg, seed=scale)
    side = min_side(cfg, 8 * scale)
    tight = min_side(cfg, scale)               # the smallest valid side
    for H, W in ((side, side), (side, side + 8 * scale), (side + 16 * scale, side), (tight, tight + scale)):
        hr = smooth(3, H, W, seed=H + W)
        lq, hq, recs = d(hr, record=True)
        assert lq.shape == (3, 3, H // scale, W // scale), (H, W, lq.shape)
        assert hq.shape == hr.shape and lq.dtype == hr.dtype == hq.dtype
        assert lq.min() >= 0 and lq.max() <= 1
        torch.testing.assert_close(lq * 255, (lq * 255).round(), rtol=0, atol=1e-4)   # quantize_output
        if not cfg.usm: assert torch.equal(hq, hr)
        assert len(recs) == 3


def test_shapes_unquantized_output_and_usm():
    cfg = preset('realesrgan', quantize_output=False, jpeg_first_prob=1.0, scale=2)   # the resize comes last
    hr = smooth(2, 80, 96)
    lq, hq = Degrader(cfg, seed=0)(hr)
    assert lq.shape == (2, 3, 40, 48) and lq.min() >= 0 and lq.max() <= 1
    assert not torch.allclose(lq * 255, (lq * 255).round(), atol=1e-3)
    torch.testing.assert_close(hq, usm_sharpen(hr))


# ---------------------------------------------------------------- bad input

@pytest.fixture(scope='module')
def esrgan():
    return Degrader('realesrgan', seed=0)


def test_bad_input_errors(esrgan):
    ok = smooth(2, 80, 80)
    cases = [
        ((ok * 255).round().to(torch.uint8), TypeError, 'divide uint8 by 255'),
        (ok * 255, ValueError, 'looks like 0-255'),
        (ok[0], ValueError, 'add a batch dimension'),
        (torch.cat([ok, ok[:, :1]], 1), ValueError, '(B,3,H,W)'),
        (ok[:, :1], ValueError, '(B,3,H,W)'),
        (ok.numpy(), TypeError, 'torch.Tensor'),
        (torch.where(torch.arange(80) == 3, float('nan'), ok), ValueError, 'NaN'),
        (torch.where(torch.arange(80) == 3, float('inf'), ok), ValueError, 'Inf'),
        (ok - 0.5, ValueError, 'must be in [0,1]'),
        (smooth(2, 72, 80), ValueError, 'smaller than 74'),
        (smooth(2, 80, 40), ValueError, 'smaller than 74'),
        (smooth(2, 82, 80), ValueError, 'not divisible by scale 4'),
        (smooth(2, 80, 90), ValueError, 'not divisible by scale 4'),
    ]
    for x, exc, msg in cases:
        with pytest.raises(exc, match=re.escape(msg)): esrgan(x)
    with pytest.raises(ValueError, match=re.escape('not divisible by scale 3')):
        Degrader(preset('bicubic', scale=3))(smooth(1, 30, 31))
    with pytest.raises(ValueError, match='smaller than'):
        Degrader(preset('light', scale=2))(smooth(1, 8, 64))


@pytest.mark.parametrize('call, msg', [
    (lambda: preset('realesrgan', stage1={'noise_range': (5, 1)}), 'stage1.noise_range'),
    (lambda: preset('realesrgan', stage1={'noise_rnage': (1, 5)}), "unknown field stage1.'noise_rnage'"),
    (lambda: preset('realesrgan', colour=True), "unknown field 'colour'"),
    (lambda: preset('realesrgan', stage1={'blur': {'kernel_prob': (0.5, 0.5, 0.1, 0, 0, 0)}}), 'kernel_prob must sum to 1'),
    (lambda: preset('realesrgan', stage2={'resize_prob': (0.5, 0.4, 0.3)}), 'stage2.resize_prob'),
    (lambda: preset('realesrgan', scale=5), 'scale must be one of'),
    (lambda: preset('bicubic', scale=5), 'scale must be one of'),
    (lambda: preset('realesrgan', final_sinc_prob=1.5), 'final_sinc_prob must be a probability'),
    (lambda: preset('realesrgan', stage1={'resize_modes': ('nearest',)}), 'stage1.resize_modes'),
    (lambda: preset('realesrgan', stage1={'jpeg_range': (0, 95)}), 'stage1.jpeg_range'),
    (lambda: preset('bsrgan', stage1={'noise_channels': 'rgb'}), 'noise_channels'),
    (lambda: preset('realesrgan', pipeline='esrgan'), 'pipeline must be one of'),
    (lambda: preset('nope'), "unknown preset 'nope'"),
    (lambda: Degrader('nope'), "unknown preset 'nope'"),
])
def test_bad_configs(call, msg):
    with pytest.raises(ValueError, match=re.escape(msg)): call()


# ---------------------------------------------------------------- per-sample variety

def test_per_sample_variety_within_one_batch():
    img = photo(0)[:, 160:256, 200:296]
    hr = img[None].repeat(16, 1, 1, 1).contiguous()
    lq, hq, recs = Degrader('realesrgan', seed=3)(hr, record=True)
    distinct = lambda k: len({r[k] for r in recs})
    need = {'stage1.resize': 2, 'stage1.resize_mode': 2, 'stage2.resize': 2, 'stage2.resize_mode': 2,
            'final.resize_mode': 2, 'stage1.noise': 2, 'stage2.noise': 2, 'stage1.gray': 2,
            'stage1.kernel.type': 2, 'stage1.kernel.ksize': 3, 'final.order': 2, 'final.sinc': 2,
            'stage1.jpeg': 8, 'final.jpeg': 8, 'stage1.scale': 16, 'stage1.noise_level': 16}
    got = {k: distinct(k) for k in need}
    assert all(got[k] >= need[k] for k in need), got
    for i in range(16):                                   # identical inputs -> identical targets
        assert torch.equal(hq[i], hq[0])
    flat = lq.flatten(1)
    for i in range(16):
        for j in range(i + 1, 16):
            assert not torch.equal(flat[i], flat[j]), (i, j)
    # a larger batch is not just the same draws repeated: the records of one batch are pairwise different
    assert len({repr(sorted(r.items())) for r in recs}) == 16


# ---------------------------------------------------------------- MATLAB parity of the bicubic preset (Set5)

SET5 = shared_data() / 'Set5' if shared_data() is not None else None


@pytest.mark.skipif(SET5 is None or not (SET5 / 'HR').is_dir() or not (SET5 / 'LR_bicubic').is_dir(),
                    reason='shared Set5 data (MATLAB bicubic LR files) not found: set RESTOREKIT_SHARED_DATA')
@pytest.mark.parametrize('s', [2, 3, 4])
def test_bicubic_preset_matches_matlab_set5(s):
    d = Degrader(preset('bicubic', scale=s), seed=0)
    names = sorted(p.stem for p in (SET5 / 'HR').glob('*.png'))
    assert len(names) == 5
    n = eq = mx = 0
    for name in names:
        lr = (load_image(SET5 / 'LR_bicubic' / f'X{s}' / f'{name}x{s}.png') * 255).round()
        hr = load_image(SET5 / 'HR' / f'{name}.png')[:, :lr.shape[1] * s, :lr.shape[2] * s]   # mod-crop, top-left
        lq, hq = d(hr[None].contiguous())
        assert lq.shape[1:] == lr.shape and torch.equal(hq[0], hr)
        diff = ((lq[0] * 255).round().double() - lr).abs()
        n += diff.numel(); eq += int((diff == 0).sum()); mx = max(mx, int(diff.max()))
    assert 100 * eq / n >= 99.9 and mx <= 1, (s, 100 * eq / n, mx)


# ---------------------------------------------------------------- fastai

class _Clean(torch.utils.data.Dataset):
    def __init__(self, x): self.x = x
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return (self.x[i],)


def test_gold_callback_in_learner():
    import fastai.callback.progress  # noqa: F401  (adds Learner.no_bar)
    from fastai.callback.core import Callback
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner

    class _Spy(Callback):
        run_valid = True
        def __init__(self): self.log = []
        def before_batch(self):
            self.log.append((self.learn.training, self.learn.xb[0].clone(),
                             self.learn.yb[0].clone() if len(self.learn.yb) else None))
    class _Before(_Spy): order = -20
    class _After(_Spy): order = 0

    cfg = preset('light', scale=2)
    train = _Clean(smooth(8, 96, 96, seed=9))
    valid = gold_validation_set(smooth(2, 96, 96, seed=10), cfg, seed=0)
    dls = DataLoaders.from_dsets(train, valid, bs=4, device='cpu')
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.PixelShuffle(2))
    before, after = _Before(), _After()
    gold = GoldCallback(cfg, seed=0)
    assert gold.run_valid is False
    learn = Learner(dls, model, loss_func=F.l1_loss, cbs=[gold, before, after])
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    assert len(learn.recorder.losses) == 2

    ref = Degrader(cfg, seed=0)               # the callback's degrader, replayed on the HR batches it saw
    tr_b = [e for e in before.log if e[0]]; tr_a = [e for e in after.log if e[0]]
    assert len(tr_b) == len(tr_a) == 2
    for (_, hr, _), (_, xb, yb) in zip(tr_b, tr_a):
        assert hr.shape == (4, 3, 96, 96)
        assert xb.shape == (4, 3, 48, 48) and yb.shape == (4, 3, 96, 96)
        assert torch.equal(yb, hr)            # light: no USM, the target is the clean batch
        lq, _ = ref(hr)
        assert torch.equal(xb, lq)
    va_b = [e for e in before.log if not e[0]]; va_a = [e for e in after.log if not e[0]]
    assert len(va_a) == 1
    lq_v = torch.stack([p[0] for p in valid]); hq_v = torch.stack([p[1] for p in valid])
    for (_, xb0, yb0), (_, xb, yb) in zip(va_b, va_a):
        assert torch.equal(xb0, xb) and torch.equal(yb0, yb)   # untouched
        assert torch.equal(xb, lq_v) and torch.equal(yb, hq_v)
        assert xb.shape == (2, 3, 48, 48)


def test_gold_validation_set_cache(tmp_path):
    from safetensors.torch import load_file, save_file
    imgs = smooth(3, 100, 92, seed=21)
    v1 = gold_validation_set(imgs, 'realesrgan', seed=3, cache_dir=tmp_path)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == '.safetensors'
    assert len(v1) == 3
    for lq, hq in v1:
        assert hq.shape == (3, 100, 92) and lq.shape == (3, 25, 23)
    stored = load_file(files[0])
    for i, (lq, hq) in enumerate(v1):
        assert torch.equal(stored[f'lq{i}'], lq) and torch.equal(stored[f'hq{i}'], hq)
    v2 = gold_validation_set(imgs, 'realesrgan', seed=3, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 1
    for (a, b), (c, d) in zip(v1, v2): assert torch.equal(a, c) and torch.equal(b, d)
    v0 = gold_validation_set(imgs, 'realesrgan', seed=3)                 # no cache: same seeded pairs
    for (a, _), (c, _) in zip(v1, v0): assert torch.equal(a, c)
    # the cached file really is what is read back
    stored['lq0'] = torch.zeros_like(stored['lq0'])
    save_file(stored, files[0])
    v3 = gold_validation_set(imgs, 'realesrgan', seed=3, cache_dir=tmp_path)
    assert torch.equal(v3[0][0], torch.zeros_like(v1[0][0])) and torch.equal(v3[1][0], v1[1][0])
    # a different seed or config -> a different file (and different pairs)
    v4 = gold_validation_set(imgs, 'realesrgan', seed=4, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2
    assert not torch.equal(v4[1][0], v1[1][0])
    gold_validation_set(imgs, preset('realesrgan', final_sinc_prob=0.5), seed=3, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 3
    v5 = gold_validation_set(imgs, preset('realesrgan', scale=2), seed=3, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 4 and v5[0][0].shape == (3, 50, 46)
    gold_validation_set(imgs[:2], 'realesrgan', seed=3, cache_dir=tmp_path)    # different images
    assert len(list(tmp_path.iterdir())) == 5


# ---------------------------------------------------------------- regressions (bugs found and fixed)

_CHOICE_KEYS = ('stage2.blur', 'stage2.resize', 'stage2.resize_mode', 'stage2.noise', 'stage2.gray', 'final.order',
                'final.resize_mode', 'final.sinc', 'final.jpeg')


@pytest.mark.parametrize('other', ['size', 'dtype'])
def test_choices_do_not_depend_on_the_pixel_work(other):
    "Choices come from their own generator: the same seed gives the same choices whatever the size or dtype."
    hr = smooth(4, 80, 80)
    hr2 = smooth(4, 96, 96, seed=5) if other == 'size' else hr.double()
    a = Degrader('realesrgan', seed=0)(hr, record=True)[2]
    b = Degrader('realesrgan', seed=0)(hr2, record=True)[2]
    assert [[r[k] for k in _CHOICE_KEYS] for r in a] == [[r[k] for k in _CHOICE_KEYS] for r in b]


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
@pytest.mark.parametrize('name', ['realesrgan', 'light'])
def test_same_seed_same_choices_on_cuda(name):
    hr = _batch_for(preset(name))
    a = Degrader(name, seed=0)(hr, record=True)
    b = Degrader(name, seed=0)(hr.cuda(), record=True)
    assert a[2] == b[2]


def test_empty_batch_is_handled_clearly():
    d = Degrader('light', seed=0)
    with pytest.raises(ValueError, match='empty batch'):
        d(torch.zeros(0, 3, 64, 64))


def test_gold_validation_cache_distinguishes_images(tmp_path):
    a = smooth(2, 96, 96, seed=1)
    b = a.clone(); b[:, :, 40:] = smooth(2, 56, 96, seed=2)      # same top 40 rows, different below
    gold_validation_set(a, 'light', seed=0, cache_dir=tmp_path)
    vb = gold_validation_set(b, 'light', seed=0, cache_dir=tmp_path)
    assert torch.equal(vb[0][1], b[0]) and torch.equal(vb[1][1], b[1])   # light: the target is the image itself


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_jpeg_on_cuda_matches_cpu():
    "CUDA batches go through the same host codec: bit-identical to the CPU."
    from restorekit.degrade import jpeg
    x, q = smooth(4, 48, 56), torch.tensor([10., 30., 60., 95.])
    ref = jpeg(x, q)
    host = jpeg(x.cuda(), q).cpu()
    assert (host - ref).abs().max() <= 1e-6, f'host codec from CUDA differs from the CPU by {(host - ref).abs().max():.3g}'
