"""`restorekit.kernels`: batched Real-ESRGAN blur kernels against a NumPy re-implementation of BasicSR's formulas,
their symmetries and frequency response, argument checking, reproducibility and the sampled distribution."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from restorekit.kernels import (
    KERNEL_TYPES,
    SINC_OMEGA_SPLIT,
    BlurConfig,
    bivariate_kernels,
    kernel_grid,
    pulse_kernels,
    sample_blur_kernels,
    sample_sinc_kernels,
    sinc_kernels,
)

KINDS = ('gaussian', 'generalized', 'plateau')
KIND_OF = {'iso': 'gaussian', 'aniso': 'gaussian', 'generalized_iso': 'generalized', 'generalized_aniso': 'generalized',
           'plateau_iso': 'plateau', 'plateau_aniso': 'plateau'}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA not available')


# ---------------------------------------------------------------- reference: BasicSR's formulas in NumPy
def np_mesh(k):
    ax = np.arange(-k // 2 + 1., k // 2 + 1.)
    xx, yy = np.meshgrid(ax, ax)
    return np.stack([xx, yy], axis=-1)


def np_sigma_matrix2(sx, sy, th):
    D = np.array([[sx**2, 0], [0, sy**2]])
    U = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    return U @ D @ U.T


def np_pad(k, pad_to=21):
    p = (pad_to - len(k)) // 2
    return np.pad(k, ((p, p), (p, p)))


def np_bivariate(kind, k, sx, sy, th, beta=1.0, isotropic=False, pad_to=21):
    "BasicSR's bivariate_Gaussian / bivariate_generalized_Gaussian / bivariate_plateau, then padded."
    grid = np_mesh(k)
    sm = np.array([[sx**2, 0], [0, sx**2]]) if isotropic else np_sigma_matrix2(sx, sy, th)
    d = np.sum(np.dot(grid, np.linalg.inv(sm)) * grid, 2)
    ker = {'gaussian': np.exp(-0.5 * d), 'generalized': np.exp(-0.5 * np.power(d, beta)),
           'plateau': np.reciprocal(np.power(d, beta) + 1)}[kind]
    return np_pad(ker / ker.sum(), pad_to)


def np_circular_lowpass(cutoff, k, pad_to=21):
    "BasicSR's circular_lowpass_kernel."
    with np.errstate(divide='ignore', invalid='ignore'):
        r = lambda x, y: np.sqrt((x - (k - 1) / 2)**2 + (y - (k - 1) / 2)**2)
        ker = np.fromfunction(lambda x, y: cutoff * special.j1(cutoff * r(x, y)) / (2 * np.pi * r(x, y)), [k, k])
    ker[(k - 1) // 2, (k - 1) // 2] = cutoff**2 / (4 * np.pi)
    return np_pad(ker / ker.sum(), pad_to)


def rand_params(B=48, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    r = lambda: torch.rand(B, generator=g, dtype=torch.float64)
    sx, sy, th, be = 0.2 + 2.8 * r(), 0.2 + 2.8 * r(), (2 * r() - 1) * math.pi, 0.5 + 3.5 * r()
    ks = 7 + 2 * torch.randint(0, 8, (B,), generator=g)
    return *(v.to(dtype) for v in (sx, sy, th, be)), ks


def outside_window(ks, pad_to=21):
    xx, yy = kernel_grid(pad_to)
    h = ((ks - 1) // 2)[:, None, None]
    return (xx.abs() > h) | (yy.abs() > h)


# ---------------------------------------------------------------- grid
def test_kernel_grid_layout():
    xx, yy = kernel_grid(21)
    assert xx.shape == yy.shape == (21, 21)
    assert xx[3].tolist() == list(range(-10, 11)) and yy[:, 3].tolist() == list(range(-10, 11))
    gx, gy = np_mesh(21)[..., 0], np_mesh(21)[..., 1]
    np.testing.assert_array_equal(xx.numpy(), gx); np.testing.assert_array_equal(yy.numpy(), gy)
    assert kernel_grid(7, dtype=torch.float64)[0].dtype == torch.float64
    with pytest.raises(ValueError, match='pad_to must be a positive odd int'): kernel_grid(8)


# ---------------------------------------------------------------- Gaussian families
@pytest.mark.parametrize('kind', KINDS)
def test_bivariate_normalised_windowed_symmetric(kind):
    sx, sy, th, be, ks = rand_params()
    k = bivariate_kernels(sx, sy, th, be, kind=kind, ksize=ks)
    assert k.shape == (48, 21, 21) and k.dtype == torch.float32
    assert (k.sum(dim=(1, 2)) - 1).abs().max() < 1e-6
    assert k[outside_window(ks)].abs().max() == 0
    assert (k >= 0).all()                                # all three families are non-negative
    torch.testing.assert_close(k, k.flip(-1, -2), atol=1e-7, rtol=0)


@pytest.mark.parametrize('kind', KINDS)
def test_isotropic_invariances(kind):
    sx, _, th, be, ks = rand_params(seed=1)
    k = bivariate_kernels(sx, sx, torch.zeros_like(sx), be, kind=kind, ksize=ks)
    for other in (k.transpose(-1, -2), k.rot90(1, (-2, -1)), k.rot90(2, (-2, -1)), k.flip(-1)):
        torch.testing.assert_close(other, k, atol=1e-7, rtol=0)
    # radially symmetric: equal values at equal distance from the centre (inside the inscribed disc of the window)
    k21 = bivariate_kernels(sx, sx, torch.zeros_like(sx), be, kind=kind, ksize=21).double()
    xx, yy = kernel_grid(21)
    r2 = (xx**2 + yy**2).long()
    for v in r2[r2 <= 100].unique().tolist():
        vals = k21[:, r2 == v]
        assert (vals.max(1).values - vals.min(1).values).max() < 1e-7, v
    # iso == aniso with sigma_x == sigma_y, whatever theta
    torch.testing.assert_close(bivariate_kernels(sx, sx, th, be, kind=kind, ksize=ks), k, atol=1e-6, rtol=0)


@pytest.mark.parametrize('kind', KINDS)
def test_rotation_conventions(kind):
    sx, sy, th, be, ks = rand_params(seed=2)
    zero = torch.zeros_like(sx)
    k0 = bivariate_kernels(sx, sy, zero, be, kind=kind)
    kt = k0.transpose(-1, -2)
    torch.testing.assert_close(bivariate_kernels(sx, sy, zero + math.pi / 2, be, kind=kind), kt, atol=1e-6, rtol=0)
    torch.testing.assert_close(bivariate_kernels(sy, sx, zero, be, kind=kind), kt, atol=1e-6, rtol=0)
    k = bivariate_kernels(sx, sy, th, be, kind=kind, ksize=ks)
    torch.testing.assert_close(bivariate_kernels(sx, sy, th + math.pi, be, kind=kind, ksize=ks), k, atol=1e-6, rtol=0)
    torch.testing.assert_close(bivariate_kernels(sx, sy, -th, be, kind=kind, ksize=ks), k.flip(-2), atol=1e-6, rtol=0)
    # theta = 0: the long axis lies along x (the columns)
    k = bivariate_kernels(torch.tensor([3.0]), 0.5, 0.0)[0]
    assert k[10, 14] > 100 * k[14, 10]
    # positive theta turns +x towards +y (down): at theta = pi/4 the long axis is the main diagonal
    k = bivariate_kernels(torch.tensor([3.0]), 0.5, math.pi / 4)[0]
    assert k[13, 13] > 100 * k[7, 13]


def test_beta_one_is_gaussian():
    sx, sy, th, _, ks = rand_params(seed=3)
    one = torch.ones_like(sx)
    torch.testing.assert_close(bivariate_kernels(sx, sy, th, one, 'generalized', ks), bivariate_kernels(sx, sy, th, ksize=ks),
                               atol=1e-6, rtol=0)


BASICSR_CASES = [('gaussian', 21, 2.0, 0.7, 0.5, 1.0), ('gaussian', 7, 0.2, 3.0, -2.0, 1.0), ('gaussian', 15, 3.0, 3.0, 0.0, 1.0),
                 ('generalized', 13, 1.5, 2.5, 1.0, 0.5), ('generalized', 21, 3.0, 0.6, 2.8, 4.0),
                 ('generalized', 9, 0.4, 0.3, -3.0, 2.2), ('plateau', 9, 1.2, 1.2, 0.0, 1.0),
                 ('plateau', 19, 2.7, 0.4, -0.9, 2.0), ('plateau', 21, 0.25, 2.9, 1.7, 1.4)]


@pytest.mark.parametrize('kind,k,sx,sy,th,beta', BASICSR_CASES)
@pytest.mark.parametrize('dtype,atol', [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_bivariate_matches_basicsr(kind, k, sx, sy, th, beta, dtype, atol):
    ref = np_bivariate(kind, k, sx, sy, th, beta)
    out = bivariate_kernels(torch.tensor([sx], dtype=dtype), torch.tensor([sy], dtype=dtype), torch.tensor([th], dtype=dtype),
                            torch.tensor([beta], dtype=dtype), kind=kind, ksize=k)[0]
    assert out.dtype == dtype
    np.testing.assert_allclose(out.numpy(), ref, atol=atol, rtol=0)
    # BasicSR's isotropic mode (only sig_x used)
    iso = bivariate_kernels(torch.tensor([sx], dtype=dtype), sx, 0.0, beta, kind=kind, ksize=k)[0]
    np.testing.assert_allclose(iso.numpy(), np_bivariate(kind, k, sx, sy, th, beta, isotropic=True), atol=atol, rtol=0)


def test_batch_equals_one_at_a_time():
    sx, sy, th, be, ks = rand_params(B=12, seed=4)
    for kind in KINDS:
        k = bivariate_kernels(sx, sy, th, be, kind=kind, ksize=ks)
        for i in range(12):
            one = bivariate_kernels(sx[i:i+1], sy[i:i+1], th[i:i+1], be[i:i+1], kind=kind, ksize=int(ks[i]))
            torch.testing.assert_close(one, k[i:i+1], atol=1e-7, rtol=0)


def test_other_pad_to_and_scalars():
    k = bivariate_kernels(torch.tensor([1.0, 2.0]), 1.5, 0.3, ksize=5, pad_to=9)
    assert k.shape == (2, 9, 9)
    np.testing.assert_allclose(k[1].numpy(), np_bivariate('gaussian', 5, 2.0, 1.5, 0.3, pad_to=9), atol=1e-6)
    assert bivariate_kernels(torch.tensor(1.0), 1.0, 0.0).shape == (1, 21, 21)   # a 0-d sigma_x is one kernel
    assert bivariate_kernels(torch.ones(0), torch.ones(0), torch.ones(0)).shape == (0, 21, 21)


@pytest.mark.parametrize('call,msg', [
    (lambda o: bivariate_kernels(o, o, o, ksize=8), 'ksize must be odd'),
    (lambda o: bivariate_kernels(o, o, o, ksize=torch.tensor([7, 23])), r'1\.\.pad_to=21'),
    (lambda o: bivariate_kernels(o, o, o, ksize=torch.tensor([7, 9, 11])), r'ksize must be an int or a \(2,\) tensor'),
    (lambda o: bivariate_kernels(o, o, o, ksize=7.0), 'tensor of ints'),
    (lambda o: bivariate_kernels(-o, o, o), 'sigma_x must be finite and > 0'),
    (lambda o: bivariate_kernels(o, 0 * o, o), 'sigma_y must be finite and > 0'),
    (lambda o: bivariate_kernels(o, o, o * float('nan')), 'theta must be finite'),
    (lambda o: bivariate_kernels(o, o, o, kind='generalized'), 'needs beta'),
    (lambda o: bivariate_kernels(o, o, o, -o, kind='plateau'), 'beta must be finite and > 0'),
    (lambda o: bivariate_kernels(o, o, o, kind='box'), 'kind must be one of'),
    (lambda o: bivariate_kernels(o, torch.ones(3), o), r'sigma_y must be a number or a \(2,\) tensor'),
    (lambda o: bivariate_kernels(o[None], o[None], o[None]), r'sigma_x must be a \(B,\) tensor'),
    (lambda o: bivariate_kernels(o, o, o, pad_to=20), 'pad_to must be a positive odd int'),
    (lambda o: sinc_kernels(o * 4), r'cutoff must be in \(0, pi\]'),
    (lambda o: sinc_kernels(o * 0), r'cutoff must be in \(0, pi\]'),
    (lambda o: sinc_kernels(o, ksize=2), 'ksize must be odd'),
    (lambda o: pulse_kernels(-1), 'n must be a non-negative int'),
])
def test_argument_errors(call, msg):
    with pytest.raises(ValueError, match=msg): call(torch.ones(2))


# ---------------------------------------------------------------- sinc
@pytest.mark.parametrize('k', [3, 7, 11, 13, 21])
@pytest.mark.parametrize('w', [0.05, math.pi / 5, math.pi / 3, 1.3, 2.0, math.pi])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_sinc_matches_basicsr(k, w, dtype):
    # 1e-6 for float64 too: torch.special.bessel_j1 is off by up to 4.7e-7 (arguments 5-8) even in float64
    out = sinc_kernels(torch.tensor([w], dtype=dtype), k)[0]
    assert out.dtype == dtype
    np.testing.assert_allclose(out.numpy(), np_circular_lowpass(w, k), atol=1e-6, rtol=0)


def test_sinc_normalised_windowed_symmetric():
    w = torch.linspace(0.2, math.pi, 40)
    ks = 7 + 2 * (torch.arange(40) % 8)
    k = sinc_kernels(w, ks)
    assert (k.sum(dim=(1, 2)) - 1).abs().max() < 1e-6
    assert k[outside_window(ks)].abs().max() == 0
    for other in (k.transpose(-1, -2), k.rot90(1, (-2, -1)), k.flip(-1, -2), k.flip(-1)):
        torch.testing.assert_close(other, k, atol=1e-7, rtol=0)
    assert (k[:, 10, 10] == k.amax(dim=(1, 2))).all()     # the peak is at the centre
    # radially symmetric inside the inscribed disc of a full-size window
    k21 = sinc_kernels(w, 21).double()
    xx, yy = kernel_grid(21)
    r2 = (xx**2 + yy**2).long()
    for v in r2[r2 <= 100].unique().tolist():
        vals = k21[:, r2 == v]
        assert (vals.max(1).values - vals.min(1).values).max() < 1e-7


def _radial_freq(n=256):
    f = torch.fft.fftfreq(n, dtype=torch.float64) * 2 * math.pi
    return torch.sqrt(f[:, None]**2 + f[None, :]**2)


@pytest.mark.parametrize('k', range(7, 22, 2))
def test_sinc_frequency_response(k):
    """|FFT| (256x256 zero-padded) vs radial frequency rho, over the Real-ESRGAN omega_c range of each size.

    Measured: passband (rho < 0.7 w) mean in [0.79, 1.44], min > 0.59 (Gibbs ringing of the square window, and the
    sum-to-1 normalisation pins only rho = 0 to 1); stopband (rho > 1.3 w) mean < 0.047 (< 0.013 for size 21).
    """
    rho = _radial_freq()
    lo = math.pi / 3 if k < SINC_OMEGA_SPLIT else math.pi / 5
    ws = torch.linspace(lo, math.pi, 25, dtype=torch.float64)
    H = torch.fft.fft2(sinc_kernels(ws, k), s=(256, 256)).abs()
    for w, h in zip(ws.tolist(), H):
        p, s = h[rho < 0.7 * w], h[rho > 1.3 * w]
        assert 0.75 < p.mean() < 1.5 and p.min() > 0.55, (w, p.mean(), p.min())
        assert s.mean() < (0.02 if k == 21 else 0.05), (w, s.mean())
        assert p.mean() / s.mean() > 15
        assert abs(h[0, 0] - 1) < 1e-12                   # DC gain: the kernel sums to 1


def test_sinc_cutoff_orders_bandwidth():
    "A higher cutoff passes more: the energy above pi/2 grows with omega_c."
    rho = _radial_freq()
    H = torch.fft.fft2(sinc_kernels(torch.tensor([0.6, 1.2, 1.8, 2.4, 3.0], dtype=torch.float64)), s=(256, 256)).abs()
    hi = (H[:, rho > math.pi / 2] ** 2).mean(1)
    assert (hi.diff() > 0).all()


# ---------------------------------------------------------------- pulses
def test_pulse_kernels():
    p = pulse_kernels(5, pad_to=9, dtype=torch.float64)
    assert p.shape == (5, 9, 9) and p.dtype == torch.float64 and p.sum() == 5 and (p[:, 4, 4] == 1).all()
    x = torch.rand(2, 3, 16, 16)
    w = pulse_kernels(3)[:, None]
    assert torch.equal(torch.nn.functional.conv2d(x, w, padding=10, groups=3), x)
    assert pulse_kernels(0).shape == (0, 21, 21)


# ---------------------------------------------------------------- config
BAD_CONFIGS = [
    (dict(kernel_prob=(0.5, 0.5, 0, 0, 0, 0.1)), 'BlurConfig.kernel_prob must sum to 1'),
    (dict(kernel_prob=(0.45, 0.25, 0.12, 0.03, 0.12, 0.0299)), 'BlurConfig.kernel_prob must sum to 1'),
    (dict(kernel_prob=(0.5, 0.5)), 'BlurConfig.kernel_prob must have one probability per kernel_list entry'),
    (dict(kernel_prob=(1.1, -0.1, 0, 0, 0, 0)), 'BlurConfig.kernel_prob must be non-negative'),
    (dict(kernel_prob=(float('nan'),) * 6), 'BlurConfig.kernel_prob must be non-negative'),
    (dict(kernel_list=('iso', 'box'), kernel_prob=(0.5, 0.5)), r"BlurConfig.kernel_list has unknown kernel types \['box'\]"),
    (dict(kernel_list=(), kernel_prob=()), 'BlurConfig.kernel_list must be a non-empty'),
    (dict(kernel_list='iso', kernel_prob=(1.0,)), 'BlurConfig.kernel_list must be a non-empty'),
    (dict(sigma_range=(3.0, 0.2)), 'BlurConfig.sigma_range must have lo <= hi'),
    (dict(sigma_range=(0.0, 3.0)), 'BlurConfig.sigma_range must be positive'),
    (dict(sigma_range=(0.2, float('inf'))), 'BlurConfig.sigma_range must be a pair'),
    (dict(betag_range=(-1, 4)), 'BlurConfig.betag_range must be positive'),
    (dict(betap_range=(1,)), 'BlurConfig.betap_range must be a pair'),
    (dict(rotation_range=(1.0, -1.0)), 'BlurConfig.rotation_range must have lo <= hi'),
    (dict(kernel_range=(8, 21)), 'BlurConfig.kernel_range must hold odd sizes'),
    (dict(kernel_range=(7.0, 21.0)), 'BlurConfig.kernel_range must be a pair'),
    (dict(kernel_range=(7, 23)), 'BlurConfig.kernel_range must satisfy 3 <= lo <= hi <= pad_to=21'),
    (dict(kernel_range=(1, 21)), 'BlurConfig.kernel_range must satisfy'),
    (dict(kernel_range=(21, 7)), 'BlurConfig.kernel_range must satisfy'),
    (dict(pad_to=20), 'BlurConfig.pad_to must be an odd int'),
    (dict(pad_to=31, kernel_range=(7, 33)), 'BlurConfig.kernel_range must satisfy 3 <= lo <= hi <= pad_to=31'),
    (dict(sinc_prob=1.5), r'BlurConfig.sinc_prob must be a probability in \[0, 1\]'),
    (dict(sinc_prob=-0.1), 'BlurConfig.sinc_prob'),
]


@pytest.mark.parametrize('bad,msg', BAD_CONFIGS)
def test_config_validation(bad, msg):
    with pytest.raises(ValueError, match=msg): BlurConfig(**bad).validate()
    with pytest.raises(ValueError, match=msg): sample_blur_kernels(2, BlurConfig(**bad))


def test_config_accepts_lists_and_tolerance():
    cfg = BlurConfig(kernel_list=['iso', 'aniso'], kernel_prob=[0.5, 0.5 + 5e-7], sigma_range=[1, 1], kernel_range=[21, 21])
    assert cfg.validate() is cfg
    _, rec = sample_blur_kernels(50, cfg, torch.Generator().manual_seed(0))
    assert (rec['ksize'][~rec['sinc']] == 21).all() and torch.allclose(rec['sigma_x'][~rec['sinc']], torch.ones(1, dtype=torch.float64))


def test_sampler_argument_errors():
    with pytest.raises(ValueError, match='n must be a non-negative int'): sample_blur_kernels(-1)
    with pytest.raises(ValueError, match='n must be a non-negative int'): sample_blur_kernels(2.0)
    with pytest.raises(ValueError, match='prob must be a probability'): sample_sinc_kernels(3, 1.2)
    with pytest.raises(ValueError, match='omega_range must not exceed'): sample_sinc_kernels(3, 0.5, omega_range=(1.0, 4.0))
    with pytest.raises(ValueError, match='omega_range must be positive'): sample_sinc_kernels(3, 0.5, omega_range=(0.0, 1.0))
    with pytest.raises(ValueError, match='kernel_range must hold odd sizes'): sample_sinc_kernels(3, 0.5, kernel_range=(6, 20))


# ---------------------------------------------------------------- sampling
def _draw(seed, n=400, cfg=None, **kw):
    return sample_blur_kernels(n, cfg or BlurConfig(), torch.Generator().manual_seed(seed), **kw)


def _rec_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) or torch.allclose(a[k], b[k], equal_nan=True, rtol=0, atol=0)
                                        for k in a)


def test_reproducible():
    (k1, r1), (k2, r2), (k3, r3) = _draw(11), _draw(11), _draw(12)
    assert torch.equal(k1, k2) and _rec_equal(r1, r2)
    assert not torch.equal(k1, k3) and not _rec_equal(r1, r3)
    torch.manual_seed(5); a, ra = sample_blur_kernels(30)
    torch.manual_seed(5); b, rb = sample_blur_kernels(30)
    assert torch.equal(a, b) and _rec_equal(ra, rb)
    # the draws do not depend on the kernels' dtype
    k64, r64 = _draw(11, dtype=torch.float64)
    assert _rec_equal(r1, r64) and k64.dtype == torch.float64
    torch.testing.assert_close(k64.float(), k1, atol=1e-6, rtol=0)
    s1, rs1 = sample_sinc_kernels(200, 0.5, generator=torch.Generator().manual_seed(3))
    s2, rs2 = sample_sinc_kernels(200, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(s1, s2) and _rec_equal(rs1, rs2)


def test_record_structure_and_consistency():
    k, rec = _draw(21, n=600)
    assert set(rec) == {'kernel_type', 'sinc', 'ksize', 'sigma_x', 'sigma_y', 'theta', 'beta', 'omega_c'}
    assert all(v.device.type == 'cpu' and v.shape == (600,) for v in rec.values())
    assert rec['sinc'].dtype == torch.bool and rec['kernel_type'].dtype == rec['ksize'].dtype == torch.int64
    assert all(rec[f].is_floating_point() for f in ('sigma_x', 'sigma_y', 'theta', 'beta', 'omega_c'))
    s, t = rec['sinc'], rec['kernel_type']
    assert ((t == -1) == s).all()
    for f in ('sigma_x', 'sigma_y', 'theta', 'beta'): assert rec[f][s].isnan().all()
    assert rec['omega_c'][~s].isnan().all() and not rec['omega_c'][s].isnan().any()
    assert (k.sum(dim=(1, 2)) - 1).abs().max() < 1e-6
    assert k[outside_window(rec['ksize'])].abs().max() == 0
    # every kernel is what the public builders make from its record
    for i, name in enumerate(KERNEL_TYPES):
        m = t == i
        assert m.any()
        kind = KIND_OF[name]
        beta = rec['beta'][m].float() if kind != 'gaussian' else None
        assert rec['beta'][m].isnan().all() == (kind == 'gaussian')
        ref = bivariate_kernels(rec['sigma_x'][m].float(), rec['sigma_y'][m].float(), rec['theta'][m].float(), beta, kind,
                                rec['ksize'][m])
        torch.testing.assert_close(k[m], ref, atol=1e-6, rtol=0)
        if not name.endswith('aniso'):
            assert torch.equal(rec['sigma_y'][m], rec['sigma_x'][m]) and (rec['theta'][m] == 0).all()
    torch.testing.assert_close(k[s], sinc_kernels(rec['omega_c'][s].float(), rec['ksize'][s]), atol=1e-6, rtol=0)


def test_sample_zero_and_pad_to():
    k, rec = sample_blur_kernels(0)
    assert k.shape == (0, 21, 21) and all(len(v) == 0 for v in rec.values())
    k, rec = sample_blur_kernels(100, BlurConfig(pad_to=31, kernel_range=(23, 31)), torch.Generator().manual_seed(0))
    assert k.shape == (100, 31, 31) and set(rec['ksize'].tolist()) <= {23, 25, 27, 29, 31}
    assert (k.sum(dim=(1, 2)) - 1).abs().max() < 1e-6


def test_half_precision_and_generator_device():
    k16, r16 = _draw(2, n=64, dtype=torch.float16)
    k32, r32 = _draw(2, n=64)
    assert k16.dtype == torch.float16 and _rec_equal(r16, r32)
    torch.testing.assert_close(k16.float(), k32, atol=2e-3, rtol=1e-2)
    assert bivariate_kernels(torch.ones(3, dtype=torch.bfloat16), 1.0, 0.0).dtype == torch.bfloat16
    assert sinc_kernels(torch.ones(3, dtype=torch.float16)).dtype == torch.float16
    ks, _ = sample_sinc_kernels(16, 1.0, generator=torch.Generator().manual_seed(0), dtype=torch.float16)
    assert ks.dtype == torch.float16


@cuda
def test_cuda_matches_cpu():
    kc, rc = _draw(9, n=512, device='cuda')
    k, r = _draw(9, n=512)
    assert kc.device.type == 'cuda' and all(v.device.type == 'cpu' for v in rc.values())
    assert _rec_equal(rc, r)
    torch.testing.assert_close(kc.cpu(), k, atol=1e-6, rtol=0)
    sc, rsc = sample_sinc_kernels(256, 0.5, generator=torch.Generator().manual_seed(1), device='cuda')
    s, rs = sample_sinc_kernels(256, 0.5, generator=torch.Generator().manual_seed(1))
    assert _rec_equal(rsc, rs)
    torch.testing.assert_close(sc.cpu(), s, atol=1e-6, rtol=0)
    sx, sy, th, be, ks = rand_params()
    for kind in KINDS:
        out = bivariate_kernels(sx.cuda(), sy.cuda(), th.cuda(), be.cuda(), kind, ks.cuda())
        assert out.device.type == 'cuda'
        torch.testing.assert_close(out.cpu(), bivariate_kernels(sx, sy, th, be, kind, ks), atol=1e-6, rtol=0)
    assert pulse_kernels(2, device='cuda').device.type == 'cuda'
    with pytest.raises(ValueError, match='generator must be a CPU torch.Generator'):
        sample_blur_kernels(2, generator=torch.Generator(device='cuda'))


# ---------------------------------------------------------------- the sampled distribution (Real-ESRGAN defaults)
@pytest.fixture(scope='module')
def big_draw():
    return sample_blur_kernels(20_000, BlurConfig(), torch.Generator().manual_seed(2024))


def _ks_uniform(x, lo, hi):
    return stats.kstest(np.asarray(x), 'uniform', args=(lo, hi - lo)).pvalue


P_MIN = 0.001


def test_distribution_types_sinc_sizes(big_draw):
    k, rec = big_draw
    s, t = rec['sinc'], rec['kernel_type']
    assert (k.sum(dim=(1, 2)) - 1).abs().max() < 1e-6
    # sinc frequency ~ 0.1
    assert stats.binomtest(int(s.sum()), len(s), 0.1).pvalue > P_MIN
    assert abs(s.double().mean() - 0.1) < 0.01
    # type frequencies among non-sinc draws ~ kernel_prob
    counts = torch.bincount(t[~s], minlength=6).numpy()
    assert stats.chisquare(counts, np.array(BlurConfig().kernel_prob) * counts.sum()).pvalue > P_MIN
    # ksize uniform over the 8 odd sizes, for sinc and mixed kernels alike
    sizes = list(range(7, 22, 2))
    assert set(rec['ksize'].tolist()) == set(sizes)
    for m in (s, ~s, torch.ones_like(s)):
        c = torch.bincount(rec['ksize'][m], minlength=22)[7::2].numpy()
        assert stats.chisquare(c).pvalue > P_MIN


def test_distribution_sigma_theta(big_draw):
    _, rec = big_draw
    s, t = rec['sinc'], rec['kernel_type']
    sx = rec['sigma_x'][~s]
    assert sx.min() >= 0.2 and sx.max() <= 3.0
    assert _ks_uniform(sx, 0.2, 3.0) > P_MIN
    aniso = (t == 1) | (t == 3) | (t == 5)
    iso = (t == 0) | (t == 2) | (t == 4)
    sy = rec['sigma_y'][aniso]
    assert sy.min() >= 0.2 and sy.max() <= 3.0 and _ks_uniform(sy, 0.2, 3.0) > P_MIN
    assert abs(stats.pearsonr(rec['sigma_x'][aniso], sy).statistic) < 0.05      # drawn independently
    th = rec['theta'][aniso]
    assert th.min() >= -math.pi and th.max() <= math.pi and _ks_uniform(th, -math.pi, math.pi) > P_MIN
    assert torch.equal(rec['sigma_y'][iso], rec['sigma_x'][iso]) and (rec['theta'][iso] == 0).all()


def test_distribution_beta_follows_basicsr(big_draw):
    "BasicSR: beta ~ U(lo, 1) or U(1, hi) with probability 1/2 each, for generalized and plateau kernels."
    _, rec = big_draw
    t = rec['kernel_type']
    bg = rec['beta'][(t == 2) | (t == 3)]
    assert bg.min() >= 0.5 and bg.max() <= 4.0
    assert stats.binomtest(int((bg < 1).sum()), len(bg), 0.5).pvalue > P_MIN
    assert _ks_uniform(bg[bg < 1], 0.5, 1.0) > P_MIN and _ks_uniform(bg[bg >= 1], 1.0, 4.0) > P_MIN
    bp = rec['beta'][(t == 4) | (t == 5)]
    assert bp.min() >= 1.0 and bp.max() <= 2.0
    assert stats.binomtest(int((bp == 1).sum()), len(bp), 0.5).pvalue > P_MIN  # half exactly 1 (BasicSR's uniform(1, 1))
    assert _ks_uniform(bp[bp > 1], 1.0, 2.0) > P_MIN
    assert rec['beta'][t <= 1].isnan().all()


def test_distribution_omega_given_ksize(big_draw):
    _, rec = big_draw
    s = rec['sinc']
    w, ks = rec['omega_c'][s], rec['ksize'][s]
    small = ks < SINC_OMEGA_SPLIT
    assert small.any() and (~small).any()
    assert w[small].min() >= math.pi / 3 and w[~small].min() >= math.pi / 5 and w.max() <= math.pi
    assert _ks_uniform(w[small], math.pi / 3, math.pi) > P_MIN
    assert _ks_uniform(w[~small], math.pi / 5, math.pi) > P_MIN
    assert (w[~small] < math.pi / 3).any()                  # the large sizes do reach below pi/3


def test_beta_range_without_one_stays_in_range():
    "Deviation from BasicSR for ranges that exclude 1: 1 is clamped into the range, so every beta stays inside."
    cfg = BlurConfig(kernel_list=('generalized_iso', 'plateau_aniso'), kernel_prob=(0.5, 0.5), betag_range=(1.5, 3.0),
                     betap_range=(0.2, 0.8), sinc_prob=0.0)
    _, rec = sample_blur_kernels(4000, cfg, torch.Generator().manual_seed(0))
    bg, bp = rec['beta'][rec['kernel_type'] == 0], rec['beta'][rec['kernel_type'] == 1]
    assert bg.min() >= 1.5 and bg.max() <= 3.0 and bp.min() >= 0.2 and bp.max() <= 0.8
    assert stats.binomtest(int((bg == 1.5).sum()), len(bg), 0.5).pvalue > P_MIN    # the lower half collapses onto lo


def test_zero_probability_types_never_drawn():
    cfg = BlurConfig(kernel_prob=(0.0, 1.0, 0.0, 0.0, 0.0, 0.0), sinc_prob=0.0)
    _, rec = sample_blur_kernels(3000, cfg, torch.Generator().manual_seed(0))
    assert (rec['kernel_type'] == 1).all() and not rec['sinc'].any()
    _, rec = sample_blur_kernels(500, BlurConfig(sinc_prob=1.0), torch.Generator().manual_seed(0))
    assert rec['sinc'].all()


def test_final_sinc_distribution():
    k, rec = sample_sinc_kernels(20_000, 0.8, generator=torch.Generator().manual_seed(7))
    s = rec['sinc']
    assert stats.binomtest(int(s.sum()), len(s), 0.8).pvalue > P_MIN
    assert torch.equal(k[~s], pulse_kernels(int((~s).sum())))
    assert (rec['ksize'][~s] == 1).all() and rec['omega_c'][~s].isnan().all()
    assert stats.chisquare(torch.bincount(rec['ksize'][s], minlength=22)[7::2].numpy()).pvalue > P_MIN
    w = rec['omega_c'][s]
    assert w.min() >= math.pi / 3 and w.max() <= math.pi and _ks_uniform(w, math.pi / 3, math.pi) > P_MIN
    assert (k.sum(dim=(1, 2)) - 1).abs().max() < 1e-6
    torch.testing.assert_close(k[s][:500], sinc_kernels(w[:500].float(), rec['ksize'][s][:500]), atol=1e-6, rtol=0)
    assert sample_sinc_kernels(50, 0.0)[1]['sinc'].sum() == 0 and sample_sinc_kernels(50, 1.0)[1]['sinc'].all()
