"""`restorekit.metrics`: SR-convention PSNR/SSIM and their fastai metrics.

Checks against a line-by-line NumPy/OpenCV transcription of BasicSR's `calculate_psnr` / `calculate_ssim` (to 1e-6)
and scikit-image, MATLAB's `rgb2ycbcr` values, input validation, batching, gray images, per-image averaging in the
fastai metrics (fake learner with unequal batches and a real `Learner`), the LPIPS metric, and the published bicubic
figures on Set5 (skipped when the shared data are absent).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn

from restorekit.core import load_image, shared_data
from restorekit.imresize import imresize
from restorekit.metrics import (
    PSNR,
    SSIM,
    AvgImageMetric,
    LPIPSMetric,
    lpips_metric,
    psnr,
    psnr_metric,
    rgb_to_y,
    ssim,
    ssim_metric,
    to_levels,
)

PUBLISHED = {2: (33.66, 0.9299), 3: (30.39, 0.8682), 4: (28.42, 0.8104)}  # Set5 bicubic, Y, crop = scale

# ---------------------------------------------------------------- BasicSR's code (basicsr/metrics/psnr_ssim.py), in NumPy


def _bsr_to_y(img):
    "basicsr.metrics.metric_util.to_y_channel on a BGR HxWx3 image in 0..255."
    img = img.astype(np.float32) / 255.
    return (np.dot(img, [24.966, 128.553, 65.481]) + 16.0)[..., None]


def _bsr_crop(img, img2, c):
    if c != 0: return img[c:-c, c:-c, ...], img2[c:-c, c:-c, ...]
    return img, img2


def basicsr_psnr(img, img2, crop_border, test_y_channel=True):
    img, img2 = _bsr_crop(img, img2, crop_border)
    if test_y_channel: img, img2 = _bsr_to_y(img), _bsr_to_y(img2)
    img, img2 = img.astype(np.float64), img2.astype(np.float64)
    mse = np.mean((img - img2) ** 2)
    return float('inf') if mse == 0 else 10. * np.log10(255. * 255. / mse)


def _bsr_ssim(img, img2):
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    kernel = cv2.getGaussianKernel(11, 1.5)
    window = np.outer(kernel, kernel.transpose())
    mu1 = cv2.filter2D(img, -1, window)[5:-5, 5:-5]
    mu2 = cv2.filter2D(img2, -1, window)[5:-5, 5:-5]
    mu1_sq, mu2_sq, mu1_mu2 = mu1 ** 2, mu2 ** 2, mu1 * mu2
    sigma1_sq = cv2.filter2D(img ** 2, -1, window)[5:-5, 5:-5] - mu1_sq
    sigma2_sq = cv2.filter2D(img2 ** 2, -1, window)[5:-5, 5:-5] - mu2_sq
    sigma12 = cv2.filter2D(img * img2, -1, window)[5:-5, 5:-5] - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / ((mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))
    return ssim_map.mean()


def basicsr_ssim(img, img2, crop_border, test_y_channel=True):
    img, img2 = _bsr_crop(img, img2, crop_border)
    if test_y_channel: img, img2 = _bsr_to_y(img), _bsr_to_y(img2)
    img, img2 = img.astype(np.float64), img2.astype(np.float64)
    return np.array([_bsr_ssim(img[..., i], img2[..., i]) for i in range(img.shape[2])]).mean()


def bgr255(x: torch.Tensor) -> np.ndarray:
    "(C,H,W) float in [0,1] -> HxWxC float64 BGR levels 0..255, as BasicSR reads a PNG."
    lv = np.floor(x.double().numpy() * 255 + 0.5).clip(0, 255)
    return np.ascontiguousarray(lv.transpose(1, 2, 0)[..., ::-1])


# ---------------------------------------------------------------- test images


def _pair(photo_maker, h=72, w=88, seed=0, kind='sr'):
    "A photo-like HR image and a degraded copy, float32 (3,h,w) in [0,1]."
    hr = torch.from_numpy(photo_maker(h, w, seed=seed)).permute(2, 0, 1).float() / 255
    g = torch.Generator().manual_seed(seed)
    if kind == 'sr': sr = imresize(imresize(hr, 0.5), size=(h, w))
    else: sr = hr + 0.03 * torch.randn(hr.shape, generator=g)
    return sr.clamp(0, 1), hr


@pytest.fixture
def pair(photo_maker): return _pair(photo_maker)


@pytest.fixture
def batch(photo_maker):
    "6 (pred, target) pairs, mixed degradations, one pred much closer to its target than the others."
    ps, ts = zip(*[_pair(photo_maker, seed=s, kind=k) for s, k in enumerate(['sr', 'noise', 'sr', 'noise', 'sr', 'sr'])])
    p, t = torch.stack(ps), torch.stack(ts)
    p[5] = (t[5] + 0.003 * torch.randn(t[5].shape, generator=torch.Generator().manual_seed(9))).clamp(0, 1)
    return p, t


# ---------------------------------------------------------------- levels and Y


def test_to_levels_rounds_half_up_and_clamps():
    x = torch.tensor([0., 0.49 / 255, 0.51 / 255, 1.49 / 255, 0.5, 254.51 / 255, 1., 1.001, -0.001])
    assert to_levels(x).tolist() == [0., 0., 1., 1., 128., 255., 255., 255., 0.]   # 0.5 -> 127.5 -> 128
    u = torch.tensor([0, 7, 255], dtype=torch.uint8)
    assert to_levels(u).dtype == torch.float64 and to_levels(u).tolist() == [0., 7., 255.]


def test_rgb_to_y_matches_matlab_rgb2ycbcr():
    # MATLAB: rgb2ycbcr([1 0 0]) -> Y 81.481/255 etc. (double input), here in 0..255 levels
    lv = torch.tensor([[255., 0, 0], [0, 255, 0], [0, 0, 255], [0, 0, 0], [255, 255, 255]]).T.reshape(1, 3, 1, 5)
    want = [16 + 65.481, 16 + 128.553, 16 + 24.966, 16., 235.]
    np.testing.assert_allclose(rgb_to_y(lv).flatten().numpy(), want, atol=1e-9)
    gray = torch.arange(256.).view(1, 1, 16, 16)
    np.testing.assert_allclose(rgb_to_y(gray).numpy(), rgb_to_y(gray.expand(1, 3, -1, -1)).numpy(), atol=1e-9)
    assert rgb_to_y(gray).dtype == torch.float64
    with pytest.raises(ValueError, match='1 or 3 channels'): rgb_to_y(torch.zeros(1, 2, 4, 4))


# ---------------------------------------------------------------- against BasicSR and scikit-image


@pytest.mark.parametrize('y_only', [True, False])
@pytest.mark.parametrize('crop', [0, 2, 3, 4])
@pytest.mark.parametrize('size', [(72, 88), (31, 45)])
@pytest.mark.parametrize('kind', ['sr', 'noise'])
def test_matches_basicsr(photo_maker, y_only, crop, size, kind):
    sr, hr = _pair(photo_maker, *size, seed=3, kind=kind)
    a, b = bgr255(sr), bgr255(hr)
    assert abs(psnr(sr, hr, 2, y_only, crop).item() - basicsr_psnr(a, b, crop, y_only)) < 1e-6
    assert abs(ssim(sr, hr, 2, y_only, crop).item() - basicsr_ssim(a, b, crop, y_only)) < 1e-6


@pytest.mark.parametrize('crop', [0, 4])
def test_matches_skimage_on_y(pair, crop):
    sr, hr = pair
    ya, yb = (rgb_to_y(to_levels(x)[None])[0, 0].numpy() for x in (sr, hr))
    if crop: ya, yb = ya[crop:-crop, crop:-crop], yb[crop:-crop, crop:-crop]
    sk = structural_similarity(ya, yb, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    assert abs(ssim(sr, hr, 4, crop_border=crop).item() - sk) < 1e-6
    assert abs(psnr(sr, hr, 4, crop_border=crop).item() - peak_signal_noise_ratio(yb, ya, data_range=255)) < 1e-6


def test_ssim_rgb_is_mean_of_channels(pair):
    sr, hr = pair
    per_channel = [ssim(sr[c:c + 1], hr[c:c + 1], 2, y_only=False).item() for c in range(3)]
    assert abs(ssim(sr, hr, 2, y_only=False).item() - np.mean(per_channel)) < 1e-12


# ---------------------------------------------------------------- behaviour


def test_batch_gives_per_image_values(batch):
    p, t = batch
    for f in (psnr, ssim):
        out = f(p, t, 2)
        assert out.shape == (6,) and out.dtype == torch.float64
        single = torch.stack([f(p[i], t[i], 2) for i in range(6)])
        assert single.shape == (6,) and torch.equal(out, single)


def test_identical_images_psnr_inf_ssim_one(pair):
    _, hr = pair
    assert psnr(hr, hr, 2).item() == math.inf
    assert psnr(hr, hr, 2, y_only=False).item() == math.inf
    assert psnr((hr * 255).round().to(torch.uint8), hr, 2).item() == math.inf     # uint8 = 8-bit levels
    assert abs(ssim(hr, hr, 2).item() - 1) < 1e-12
    assert psnr(hr + 0.4 / 255, hr, 2).item() == math.inf                        # below half a level: same 8-bit image


def test_symmetric_and_bounded(pair):
    sr, hr = pair
    assert psnr(sr, hr, 2).item() == psnr(hr, sr, 2).item()
    assert abs(ssim(sr, hr, 2).item() - ssim(hr, sr, 2).item()) < 1e-12
    assert 0 < ssim(sr, hr, 2).item() < 1


def test_dtypes_agree(pair):
    sr, hr = pair
    ref = (psnr(sr, hr, 2).item(), ssim(sr, hr, 2).item())
    u8 = to_levels(sr).to(torch.uint8)
    for x in (sr.double(), u8, u8.double() / 255):                               # the same 8-bit image
        assert (psnr(x, hr, 2).item(), ssim(x, hr, 2).item()) == pytest.approx(ref, abs=1e-12)
    assert abs(psnr(sr.half(), hr, 2).item() - ref[0]) < 0.1                    # half precision moves a few levels


def test_memory_layouts(pair):
    sr, hr = pair
    cl = [x[None].contiguous(memory_format=torch.channels_last) for x in (sr, hr)]
    for f in (psnr, ssim):
        for y_only in (True, False):
            assert f(*cl, 2, y_only).item() == pytest.approx(f(sr, hr, 2, y_only).item(), abs=1e-12)
            assert f(sr.mT, hr.mT, 2, y_only).item() == pytest.approx(f(sr.mT.contiguous(), hr.mT.contiguous(), 2, y_only).item(), abs=1e-12)


def test_inputs_not_modified(pair):
    sr, hr = pair
    s0, h0 = sr.clone(), hr.clone()
    for dt in (torch.float32, torch.float64):
        a, b = sr.to(dt), hr.to(dt)
        a0 = a.clone()
        psnr(a, b, 2); ssim(a, b, 2, y_only=False)
        assert torch.equal(a, a0)
    assert torch.equal(sr, s0) and torch.equal(hr, h0)


def test_crop_border(pair):
    sr, hr = pair
    assert psnr(sr, hr, 3).item() == psnr(sr, hr, 1, crop_border=3).item()
    c = psnr(sr[:, 4:-4, 4:-4], hr[:, 4:-4, 4:-4], 4, crop_border=0).item()
    assert abs(psnr(sr, hr, 4).item() - c) < 1e-12
    assert psnr(sr, hr, 2, crop_border=0).item() != psnr(sr, hr, 2).item()


def test_gray_images(pair):
    sr, hr = pair
    g1, g2 = sr.mean(0, keepdim=True), hr.mean(0, keepdim=True)
    g3 = (g1.expand(3, -1, -1), g2.expand(3, -1, -1))
    for f in (psnr, ssim): assert abs(f(g1, g2, 2).item() - f(*g3, 2).item()) < 1e-9
    # Y of gray = 16 + 219/255 g: PSNR(Y) - PSNR(raw gray) = 20 log10(255/219), exactly
    assert abs(psnr(g1, g2, 2) - psnr(g1, g2, 2, y_only=False) - 20 * math.log10(255 / 219)).item() < 1e-9
    assert abs(psnr(g1, g2, 2, y_only=False).item() - basicsr_psnr(bgr255(g1), bgr255(g2), 2, False)) < 1e-6


def test_min_sizes(pair):
    sr, hr = pair
    assert ssim(sr[:, :15, :15], hr[:, :15, :15], 2).shape == ()                   # exactly 11x11 left: one window
    with pytest.raises(ValueError, match=r"14x15 are 10x11 after cropping 2 px per side; SSIM's 11x11 window needs"):
        ssim(sr[:, :14, :15], hr[:, :14, :15], 2)
    assert math.isfinite(psnr(sr[:, :5, :5], hr[:, :5, :5], 2).item())             # 1x1 left
    with pytest.raises(ValueError, match='PSNR needs at least 1x1'): psnr(sr[:, :4, :9], hr[:, :4, :9], 2)


_BAD = [
    (lambda s, h: psnr(s, h[:, :-1], 2), ValueError, 'same shape'),
    (lambda s, h: psnr(s[None], h, 2), ValueError, 'same shape'),
    (lambda s, h: ssim(s[:2], h[:2], 2), ValueError, '1 or 3 channels'),
    (lambda s, h: psnr(s[0], h[0], 2), ValueError, '(C,H,W) or (B,C,H,W)'),
    (lambda s, h: psnr(s[None, None], h[None, None], 2), ValueError, '(C,H,W) or (B,C,H,W)'),
    (lambda s, h: psnr(s.numpy(), h, 2), TypeError, 'torch.Tensor'),
    (lambda s, h: psnr(s * 255, h, 2), ValueError, 'divide by 255'),
    (lambda s, h: ssim(s, h * 255, 2), ValueError, 'target must be in [0,1]'),
    (lambda s, h: psnr(s - 0.01, h, 2), ValueError, 'clamp it'),
    (lambda s, h: psnr(s.masked_fill(s > .5, math.nan), h, 2), ValueError, 'NaN or Inf'),
    (lambda s, h: psnr(s.masked_fill(s > .5, math.inf), h, 2), ValueError, 'NaN or Inf'),
    (lambda s, h: psnr(s.long(), h, 2), TypeError, 'float in [0,1] or uint8'),
    (lambda s, h: psnr(s[:, :0], h[:, :0], 2), ValueError, 'empty'),
    (lambda s, h: psnr(s, h, 0), ValueError, 'scale must be an int'),
    (lambda s, h: psnr(s, h, 2.0), ValueError, 'scale must be an int'),
    (lambda s, h: psnr(s, h, True), ValueError, 'scale must be an int'),
    (lambda s, h: ssim(s, h, 2, crop_border=-1), ValueError, 'crop_border'),
    (lambda s, h: ssim(s, h, 2, crop_border=1.5), ValueError, 'crop_border'),
    (lambda s, h: psnr(s, h, 2, crop_border=44), ValueError, 'after cropping 44 px'),
]


@pytest.mark.parametrize('i', range(len(_BAD)))
def test_bad_inputs(pair, i):
    f, exc, msg = _BAD[i]
    with pytest.raises(exc) as e: f(*pair)
    assert msg in str(e.value)


def test_range_tolerance_is_half_a_level(pair):
    _, hr = pair
    for v in (1 + 0.49 / 255, -0.49 / 255):                                     # rounds into 0..255: accepted
        x = hr.clone(); x[0, 0, 0] = v
        assert math.isfinite(psnr(x, hr, 1, crop_border=0).item())
    for v in (1 + 0.51 / 255, -0.51 / 255):
        x = hr.clone(); x[0, 0, 0] = v
        with pytest.raises(ValueError, match=r'pred must be in \[0,1\]'): psnr(x, hr, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu(batch):
    p, t = batch
    for f in (psnr, ssim):
        g = f(p.cuda(), t.cuda(), 2)
        assert g.device.type == 'cuda'
        torch.testing.assert_close(g.cpu(), f(p, t, 2), atol=1e-9, rtol=0)
    torch.testing.assert_close(psnr(p.cuda(), t, 2).cpu(), psnr(p, t, 2), atol=1e-9, rtol=0)   # target moved over


# ---------------------------------------------------------------- fastai metrics


def _feed(metric, p, t, sizes):
    metric.reset()
    i = 0
    for n in sizes:
        metric.accumulate(SimpleNamespace(pred=p[i:i + n], yb=(t[i:i + n],)))
        i += n
    return metric.value


@pytest.mark.parametrize('sizes', [(3, 2, 1), (1, 5), (6,), (1, 1, 1, 1, 1, 1)])
def test_metric_averages_over_images(batch, sizes):
    p, t = batch
    per_psnr, per_ssim = psnr(p, t, 2), ssim(p, t, 2)
    assert _feed(psnr_metric(2), p, t, sizes) == pytest.approx(per_psnr.mean().item(), abs=1e-9)
    assert _feed(ssim_metric(2), p, t, sizes) == pytest.approx(per_ssim.mean().item(), abs=1e-12)
    assert _feed(PSNR(2, y_only=False), p, t, sizes) == pytest.approx(psnr(p, t, 2, False).mean().item(), abs=1e-9)
    assert _feed(SSIM(2, y_only=False), p, t, sizes) == pytest.approx(ssim(p, t, 2, False).mean().item(), abs=1e-12)


def test_batch_mean_of_means_would_differ(batch):
    p, t = batch
    per = psnr(p, t, 2)
    of_batches = np.mean([per[:3].mean().item(), per[3:5].mean().item(), per[5:].mean().item()])
    assert abs(_feed(psnr_metric(2), p, t, (3, 2, 1)) - of_batches) > 1       # the test above can tell them apart


def test_metric_state_names_and_types(batch):
    p, t = batch
    m = psnr_metric(4)
    assert isinstance(m, PSNR) and isinstance(m, AvgImageMetric)
    assert isinstance(ssim_metric(4), SSIM)
    m.reset()
    assert m.value is None
    assert [x.name for x in (psnr_metric(2), ssim_metric(2), PSNR(2, y_only=False), SSIM(2, y_only=False),
                             PSNR(2, name='psnr_x2'), lpips_metric())] == ['psnr', 'ssim', 'psnr_rgb', 'ssim_rgb', 'psnr_x2', 'lpips']
    v1 = _feed(m, p, t, (6,))
    assert _feed(m, p, t, (6,)) == v1                                           # reset clears the state
    assert isinstance(v1, float)


def test_metric_clamps_pred_but_checks_target(batch):
    p, t = batch
    wild = p * 1.3 - 0.15                                                        # raw model output overshoots
    assert _feed(psnr_metric(2), wild, t, (4, 2)) == pytest.approx(psnr(wild.clamp(0, 1), t, 2).mean().item(), abs=1e-9)
    assert _feed(ssim_metric(2), wild.half(), t, (6,)) == pytest.approx(ssim(wild.clamp(0, 1).half(), t, 2).mean().item(), abs=1e-12)
    with pytest.raises(ValueError, match='divide by 255'): _feed(psnr_metric(2), p, t * 255, (6,))
    with pytest.raises(ValueError, match='NaN'): _feed(psnr_metric(2), p.masked_fill(p > .5, math.nan), t, (6,))
    m = AvgImageMetric(lambda a, b: psnr(a, b, 2), 'raw', clamp_pred=False)
    with pytest.raises(ValueError, match='clamp it'): _feed(m, wild, t, (6,))


def test_identical_pairs_inf_and_max_db(batch):
    p, t = batch
    p = p.clone(); p[1] = t[1]
    assert _feed(psnr_metric(2), p, t, (3, 3)) == math.inf
    per = psnr(p, t, 2).clamp(max=100)
    assert _feed(psnr_metric(2, max_db=100), p, t, (3, 3)) == pytest.approx(per.mean().item(), abs=1e-9)
    assert _feed(PSNR(2, max_db=20), p, t, (6,)) == 20                           # every image above 20 dB


def test_real_learner_validate(batch):
    from fastai.callback.progress import ProgressCallback  # noqa: F401  (patches Learner.no_bar)
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    p, t = batch
    ds = list(zip(p, t))
    dls = DataLoaders(DataLoader(ds, bs=4, shuffle=True, drop_last=True), DataLoader(ds, bs=4), device='cpu')
    model = nn.Conv2d(3, 3, 1)
    nn.init.dirac_(model.weight); nn.init.zeros_(model.bias)                     # identity, with parameters
    learn = Learner(dls, model, loss_func=nn.MSELoss(), metrics=[psnr_metric(2), ssim_metric(2), PSNR(2, y_only=False)])
    with learn.no_bar(), learn.no_logging(): loss, ps, ss, pr = learn.validate()  # valid batches of 4 and 2
    assert ps == pytest.approx(psnr(p, t, 2).mean().item(), abs=1e-6)
    assert ss == pytest.approx(ssim(p, t, 2).mean().item(), abs=1e-9)
    assert pr == pytest.approx(psnr(p, t, 2, y_only=False).mean().item(), abs=1e-6)
    assert loss == pytest.approx(((p - t) ** 2).mean().item(), rel=1e-4)


def test_inf_psnr_through_fit(tmp_path):
    "Identical images: fastai records inf, and SaveModelCallback still compares it."
    from fastai.callback.tracker import SaveModelCallback
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ds = list(zip(x, x))
    dls = DataLoaders(DataLoader(ds, bs=4, shuffle=True, drop_last=True), DataLoader(ds, bs=4), device='cpu')
    model = nn.Conv2d(3, 3, 1)
    nn.init.dirac_(model.weight); nn.init.zeros_(model.bias)
    learn = Learner(dls, model, loss_func=nn.MSELoss(), metrics=[psnr_metric(2), psnr_metric(2, max_db=100)], path=tmp_path)
    with learn.no_logging():
        learn.fit(2, lr=0.0, cbs=SaveModelCallback(monitor='psnr', comp=np.greater))
    assert [v[2:] for v in learn.recorder.values] == [[math.inf, 100.0]] * 2
    assert (tmp_path / 'models' / 'model.pth').is_file()


# ---------------------------------------------------------------- LPIPS metric


def _lpips_cls():
    try:
        from restorekit.perceptual import LPIPS
    except ImportError as e:  # the perceptual module is written separately
        pytest.skip(f'restorekit.perceptual not available: {e}')
    return LPIPS


def test_lpips_metric(batch):
    LPIPS = _lpips_cls()
    p, t = batch
    m = lpips_metric(trunk='random')
    assert isinstance(m, LPIPSMetric) and m.model is None                      # built lazily
    v = _feed(m, p, t, (3, 2, 1))
    assert isinstance(m.model, LPIPS)
    with torch.no_grad(): want = m.model(p, t)
    assert want.shape == (6,)
    assert v == pytest.approx(want.mean().item(), abs=1e-5)
    model = m.model
    _feed(m, p, t, (6,))
    assert m.model is model                                                     # built once
    wild = p * 1.3 - 0.15
    with torch.no_grad(): want = m.model(wild.clamp(0, 1), t)
    assert _feed(m, wild, t, (2, 4)) == pytest.approx(want.mean().item(), abs=1e-5)
    g = m._lpips(p[:2, :1], t[:2, :1])                                          # gray: repeated to 3 channels
    with torch.no_grad(): want = m.model(p[:2, :1].expand(-1, 3, -1, -1), t[:2, :1].expand(-1, 3, -1, -1))
    torch.testing.assert_close(g, want, atol=1e-6, rtol=0)
    assert not g.requires_grad
    with pytest.raises(ValueError, match='divide by 255'): _feed(m, p, t * 255, (6,))


# ---------------------------------------------------------------- Set5: the published bicubic figures


def _set5_root():
    root = shared_data()
    if root is None or not (root / 'Set5' / 'LR_bicubic' / 'X4').is_dir(): pytest.skip('Set5 shared data not found')
    return root


def _set5_bicubic(root, scale, protocol):
    ps, ss = [], []
    for p in sorted((root / 'Set5' / 'HR').glob('*.png')):
        lr = load_image(root / 'Set5' / 'LR_bicubic' / f'X{scale}' / f'{p.stem}x{scale}.png')
        hr = load_image(p)[:, :lr.shape[1] * scale, :lr.shape[2] * scale]       # mod-crop, top-left
        if protocol == 'uint8': sr = imresize(to_levels(lr).to(torch.uint8), scale)
        elif protocol == 'float': sr = imresize(lr.double(), scale).clamp(0, 1)
        else:                                                                   # 'ydomain': SRCNN/VDSR MATLAB demos
            hr = rgb_to_y(to_levels(hr)[None])[0] / 255
            sr = imresize(imresize(hr, 1 / scale), scale).clamp(0, 1)
        assert sr.shape == hr.shape
        yo = protocol != 'ydomain'
        ps.append(psnr(sr, hr, scale, y_only=yo).item()); ss.append(ssim(sr, hr, scale, y_only=yo).item())
    assert len(ps) == 5
    return float(np.mean(ps)), float(np.mean(ss))


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_set5_bicubic_y_protocol_matches_published(scale):
    "The published bicubic row is reproduced by the Y-plane protocol of the SRCNN/VDSR MATLAB demos."
    p, s = _set5_bicubic(_set5_root(), scale, 'ydomain')
    assert abs(p - PUBLISHED[scale][0]) <= 0.01, p
    assert abs(s - PUBLISHED[scale][1]) <= 0.0005, s


# measured here on the shipped RGB LR (MATLAB uint8 imresize path): x2 33.673/0.93029, x3 30.403/0.86891, x4 28.429/0.81114
MEASURED_RGB_LR = {2: (33.6734, 0.93029), 3: (30.4033, 0.86891), 4: (28.4290, 0.81114)}


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_set5_bicubic_rgb_lr(scale):
    "Upsampling the shipped MATLAB RGB LR: within 0.02 dB / 0.001 of the published row, and pinned to what we measure."
    root = _set5_root()
    p, s = _set5_bicubic(root, scale, 'uint8')
    assert abs(p - PUBLISHED[scale][0]) <= 0.02, p
    assert abs(s - PUBLISHED[scale][1]) <= 0.001, s
    assert abs(p - MEASURED_RGB_LR[scale][0]) <= 0.001, p
    assert abs(s - MEASURED_RGB_LR[scale][1]) <= 0.00002, s
    if scale == 2:
        pf, sf = _set5_bicubic(root, scale, 'float')
        assert 0 <= pf - p <= 0.01 and abs(sf - s) <= 0.0005
