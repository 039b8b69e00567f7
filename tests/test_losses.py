"""`restorekit.losses`: pixel, MS-SSIM and VGG losses, `RestorationLoss`, and its terms in fastai's recorder.

MS-SSIM: the small-patch rule (exhaustively over sizes, and as a hypothesis property: any size >= 3 gives a finite
loss in [0,1] with finite gradients, also for predictions outside [0,1]), equality with `pytorch_msssim` where it
applies. VGG: the layer table against torchvision, pre-ReLU capture, truncation, frozen trunk, weights sources and
the offline error. `RestorationLoss`: the weighted sum, lazily built terms, reductions. fastai: a real `Learner`
fit with one recorder column per term.
"""
from __future__ import annotations

import math

import pytest
import pytorch_msssim
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from restorekit.losses import (
    LOSS_TERMS,
    MS_SSIM_WEIGHTS,
    MS_SSIM_WINDOWS,
    VGG19_LAYERS,
    VGG_DEFAULT_LAYERS,
    CharbonnierLoss,
    LossTermMetric,
    LossTermsCallback,
    MSSSIMLoss,
    RestorationLoss,
    VGGPerceptualLoss,
    charbonnier_loss,
    check_pair,
    l1_loss,
    loss_term_metrics,
    ms_ssim_index,
    ms_ssim_loss,
    ms_ssim_setting,
)
from restorekit.perceptual import LPIPS, TrunkWeightsError, load_trunk


def smooth_batch(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    "Random images in [0,1] with some structure: low-resolution noise upsampled, plus a little fine noise."
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(b, c, max(1, h // 4), max(1, w // 4), generator=g)
    x = F.interpolate(lo, size=(h, w), mode='bilinear', align_corners=False)
    return (x + 0.05 * torch.randn(b, c, h, w, generator=g)).clamp(0, 1)


def noisy(x: torch.Tensor, sigma: float = 0.1, seed: int = 1, clamp: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y = x + sigma * torch.randn(x.shape, generator=g)
    return y.clamp(0, 1) if clamp else y


# ---------------------------------------------------------------------------------------------------- input checks

def test_check_pair_errors():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match='same shape'): check_pair(x, x[..., :4])
    with pytest.raises(ValueError, match=r'x\[None\]'): check_pair(x[0], x[0])
    with pytest.raises(ValueError, match='RGB'): check_pair(x[:, :1], x[:, :1], rgb=True)
    with pytest.raises(ValueError, match='got 2'): check_pair(x[:, :2], x[:, :2])
    with pytest.raises(TypeError, match='float'): check_pair((x * 255).byte(), x)
    with pytest.raises(TypeError, match='torch.Tensor'): check_pair(x.numpy(), x)
    check_pair(x, x); check_pair(x[:, :1], x[:, :1])


def test_nan_propagates_in_pixel_losses():
    "Losses don't check values: a NaN in the prediction gives a NaN loss (the training loop's guard handles it)."
    x = torch.rand(2, 3, 40, 40)
    p = x.clone(); p[0, 0, 0, 0] = float('nan')
    assert torch.isnan(l1_loss(p, x)) and torch.isnan(charbonnier_loss(p, x)) and torch.isnan(ms_ssim_loss(p, x))
    assert torch.isnan(RestorationLoss(lpips=0)(p, x))


def test_nan_propagates_through_the_lpips_term():
    "With LPIPS on, a NaN prediction still gives a NaN loss (no ValueError from LPIPS's input scan), and no device sync."
    loss = RestorationLoss(l1=1.0, ms_ssim=0.0, lpips=0.1, trunk='random')
    x = torch.rand(2, 3, 40, 40)
    p = x.clone(); p[1, 2, 3, 4] = float('nan')
    assert torch.isnan(loss(p, x)) and torch.isnan(loss.last_terms['lpips'])
    with pytest.raises(ValueError, match='NaN or Inf'): LPIPS(trunk='random')(p, x)   # the metric still refuses it


# --------------------------------------------------------------------------------------------------- pixel losses

def test_l1_and_charbonnier():
    x, y = smooth_batch(3, 3, 16, 20), smooth_batch(3, 3, 16, 20, seed=5)
    assert torch.allclose(l1_loss(x, y), F.l1_loss(x, y), atol=1e-7)
    assert l1_loss(x, y, 'none').shape == (3,)
    assert torch.allclose(l1_loss(x, y, 'sum'), (x - y).abs().flatten(1).mean(1).sum(), atol=1e-6)
    for eps in (1e-3, 0.05):
        ref = ((x - y) ** 2 + eps ** 2).sqrt().mean()
        assert torch.allclose(charbonnier_loss(x, y, eps), ref, atol=1e-7)
        assert torch.allclose(CharbonnierLoss(eps)(x, y), ref, atol=1e-7)
    assert abs(charbonnier_loss(x, x).item() - 1e-3) < 1e-9           # minimum is ε
    with pytest.raises(ValueError, match='eps must be > 0'): charbonnier_loss(x, y, eps=0)
    with pytest.raises(ValueError, match='reduction'): l1_loss(x, y, 'avg')


# ------------------------------------------------------------------------------------------------------- MS-SSIM

def _settings_in_order():
    return [(n, w) for n in (5, 4, 3, 2) for w in MS_SSIM_WINDOWS]


def test_ms_ssim_setting_rule_exhaustive():
    "For every side 3..600: the chosen setting fits, and no setting earlier in the documented order fits."
    order = _settings_in_order()
    for s in range(3, 601):
        st_ = ms_ssim_setting(s, s + 7)
        n, w = st_['scales'], st_['win_size']
        assert len(st_['weights']) == n and w % 2 == 1 and 3 <= w <= 11
        if n == 1:
            assert s in (3, 4) and w == 3 and st_['weights'] == [1.0]
            assert not any(s > (ww - 1) * 2 ** (nn_ - 1) for nn_, ww in order)
            continue
        assert s > (w - 1) * 2 ** (n - 1)                                  # fits: coarsest scale >= window
        assert math.ceil(s / 2 ** (n - 1)) >= w
        earlier = order[:order.index((n, w))]
        assert not any(s > (ww - 1) * 2 ** (nn_ - 1) for nn_, ww in earlier), s
        if n == 5: assert st_['weights'] == list(MS_SSIM_WEIGHTS)
        else:
            ref = MS_SSIM_WEIGHTS[:n]
            assert st_['weights'] == pytest.approx([v / sum(ref) for v in ref])
            assert sum(st_['weights']) == pytest.approx(1.0)
    assert (ms_ssim_setting(161, 161)['scales'], ms_ssim_setting(161, 161)['win_size']) == (5, 11)
    assert (ms_ssim_setting(160, 999)['scales'], ms_ssim_setting(160, 999)['win_size']) == (5, 9)
    assert (ms_ssim_setting(32, 32)['scales'], ms_ssim_setting(32, 32)['win_size']) == (4, 3)


@pytest.mark.parametrize('h,w', [(2, 64), (64, 1), (0, 0)])
def test_ms_ssim_too_small_is_a_clear_error(h, w):
    with pytest.raises(ValueError, match='at least 3x3'): ms_ssim_setting(h, w)
    if h and w:
        x = torch.rand(1, 3, h, w)
        with pytest.raises(ValueError, match='at least 3x3'): ms_ssim_loss(x, x)


@pytest.mark.parametrize('size', [(256, 256), (161, 161), (200, 300)])
def test_ms_ssim_equals_pytorch_msssim(size):
    y = smooth_batch(2, 3, *size, seed=2)
    x = noisy(y, 0.1)
    ref = pytorch_msssim.ms_ssim(x, y, data_range=1.0, size_average=False)
    assert torch.allclose(ms_ssim_index(x, y), ref, atol=1e-6)
    assert torch.allclose(ms_ssim_loss(x, y), 1 - ref.mean(), atol=1e-6)
    assert torch.allclose(MSSSIMLoss(reduction='none')(x, y), 1 - ref, atol=1e-6)


def test_ms_ssim_smaller_windows_and_fewer_scales_match_pytorch_msssim():
    y = smooth_batch(2, 3, 192, 192, seed=3); x = noisy(y, 0.15)
    for win in (9, 7, 5, 3):
        s = {'scales': 5, 'win_size': win, 'weights': list(MS_SSIM_WEIGHTS)}
        ref = pytorch_msssim.ms_ssim(x, y, data_range=1.0, size_average=False, win_size=win)
        assert torch.allclose(ms_ssim_index(x, y, s), ref, atol=1e-6)
    for n in (4, 3, 2):
        ws = [v / sum(MS_SSIM_WEIGHTS[:n]) for v in MS_SSIM_WEIGHTS[:n]]
        ref = pytorch_msssim.ms_ssim(x, y, data_range=1.0, size_average=False, weights=ws)
        assert torch.allclose(ms_ssim_index(x, y, {'scales': n, 'win_size': 11, 'weights': ws}), ref, atol=1e-6)
    # single scale on a 4x4 patch: pytorch_msssim.ssim with negative values clipped
    a, b = x[..., :4, :4], y[..., :4, :4]
    ref = pytorch_msssim.ssim(a, b, data_range=1.0, size_average=False, win_size=3, nonnegative_ssim=True)
    assert torch.allclose(ms_ssim_index(a, b), ref, atol=1e-6)


def test_ms_ssim_setting_that_does_not_fit_is_refused():
    x = torch.rand(1, 3, 100, 100)
    with pytest.raises(ValueError, match='does not fit'):
        ms_ssim_index(x, x, {'scales': 5, 'win_size': 11, 'weights': list(MS_SSIM_WEIGHTS)})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(3, 180), w=st.integers(3, 180), c=st.sampled_from([1, 3]), seed=st.integers(0, 2 ** 16),
       sigma=st.floats(0.0, 0.5), outside=st.booleans())
def test_ms_ssim_any_size_property(h, w, c, seed, sigma, outside):
    "For any size >= 3: the loss computes, is finite and in [0,1], and its gradient is finite — also for raw predictions outside [0,1]."
    y = smooth_batch(2, c, h, w, seed=seed)
    p = noisy(y, sigma, seed=seed + 1, clamp=not outside).requires_grad_()
    v = ms_ssim_loss(p, y)
    v.backward()
    assert math.isfinite(v.item()) and -1e-5 <= v.item() <= 1 + 1e-5
    assert p.grad is not None and torch.isfinite(p.grad).all()


def test_ms_ssim_gradient_bounded_near_zero_terms():
    "Anti-correlated predictions (cs <= 0) and overshooting ones: finite, bounded gradients."
    y = smooth_batch(2, 3, 96, 96, seed=7)
    for p0 in (1 - y, y * 1.2 - 0.1, torch.full_like(y, -0.05)):
        p = p0.clone().requires_grad_()
        ms_ssim_loss(p, y).backward()
        assert torch.isfinite(p.grad).all() and p.grad.abs().max() < 1e3


def test_ms_ssim_identical_is_zero_and_dtypes():
    y = smooth_batch(2, 3, 64, 64)
    assert ms_ssim_loss(y, y).abs().item() < 1e-5
    assert ms_ssim_loss(y.half(), y.half()).dtype == torch.float32
    assert ms_ssim_loss(y.double(), y.double()).dtype == torch.float64


# --------------------------------------------------------------------------------------------------------- VGG

def test_vgg_layer_table_matches_torchvision():
    with torch.device('meta'): feats = torchvision.models.vgg19().features
    names, block, j = {}, 1, 0
    for i, m in enumerate(feats):
        if isinstance(m, nn.Conv2d): j += 1; names[f'conv{block}_{j}'] = i
        elif isinstance(m, nn.MaxPool2d): block, j = block + 1, 0
    assert names == VGG19_LAYERS
    assert [VGG19_LAYERS[k] for k in VGG_DEFAULT_LAYERS] == [2, 7, 16, 25, 34]


def test_vgg_pre_relu_features_and_truncation():
    torch.manual_seed(0)
    loss = VGGPerceptualLoss(trunk='random')
    assert len(loss.trunk) == 35                                                # up to conv5_4, nothing after
    assert not any(getattr(m, 'inplace', False) for m in loss.trunk.modules())
    x = smooth_batch(2, 3, 32, 32)
    f = loss.features(x)
    assert list(f) == list(VGG_DEFAULT_LAYERS)
    for k, v in f.items(): assert (v < 0).any(), k                              # pre-ReLU: negatives survive
    # the same conv outputs as torchvision's own features (inplace ReLUs) computed layer by layer
    xn = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h = xn
    for i, m in enumerate(loss.trunk):
        h = m(h)
        if i in (2, 16): assert torch.allclose(f[{2: 'conv1_2', 16: 'conv3_4'}[i]], h, atol=1e-5)
    # only the needed layers are run
    assert len(VGGPerceptualLoss(('conv1_1',), trunk='random').trunk) == 1
    assert len(VGGPerceptualLoss(('conv3_1', 'conv2_2'), trunk='random').trunk) == 11


def test_vgg_loss_gradients_and_frozen_trunk():
    torch.manual_seed(0)
    loss = VGGPerceptualLoss(trunk='random')
    y = smooth_batch(2, 3, 32, 32); p = noisy(y).requires_grad_(); t = y.clone().requires_grad_()
    v = loss(p, t); v.backward()
    assert v.item() > 0 and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert t.grad is None                                                        # target features under no_grad
    assert all(q.grad is None and not q.requires_grad for q in loss.parameters())
    assert loss(y, y).item() == 0
    loss.train(); assert not loss.trunk.training
    loss.reduction = 'none'; assert loss(p, t).shape == (2,)


def test_vgg_weights_and_criterion():
    y = smooth_batch(2, 3, 32, 32); p = noisy(y)
    torch.manual_seed(0); a = VGGPerceptualLoss(('conv1_2', 'conv2_2'), weights=[1.0, 0.0], trunk='random', criterion='mse')
    torch.manual_seed(0); b = VGGPerceptualLoss(('conv1_2',), weights={'conv1_2': 1.0}, trunk='random', criterion='mse')
    assert torch.allclose(a(p, y), b(p, y), atol=1e-6)
    fa, fb = b.features(p)['conv1_2'], b.features(y)['conv1_2']
    assert torch.allclose(b(p, y), F.mse_loss(fa, fb), rtol=1e-5)
    torch.manual_seed(0); eq = VGGPerceptualLoss(trunk='random')
    assert eq.layer_weights == {k: 0.2 for k in VGG_DEFAULT_LAYERS}
    with pytest.raises(ValueError, match='valid names: conv1_1'): VGGPerceptualLoss(('pool5',), trunk='random')
    with pytest.raises(ValueError, match='3 weights for 5 layers'): VGGPerceptualLoss(weights=[1, 1, 1], trunk='random')
    with pytest.raises(ValueError, match="'l1' or 'mse'"): VGGPerceptualLoss(criterion='l2', trunk='random')
    with pytest.raises(ValueError, match='RGB'): eq(y[:, :1], y[:, :1])


def test_vgg_trunk_from_path_and_state_dict(tmp_path):
    torch.manual_seed(3)
    sd = load_trunk('vgg19', 'random').state_dict()
    torch.save(sd, tmp_path / 'vgg19_features.pth')
    for src in (tmp_path / 'vgg19_features.pth', str(tmp_path / 'vgg19_features.pth'), sd):
        loss = VGGPerceptualLoss(('conv2_2',), trunk=src)
        assert torch.equal(loss.trunk[7].weight, sd['7.weight'])




def test_vgg_imagenet_offline_raises_clear_error_quickly(offline_empty_cache, tmp_path, monkeypatch):
    "Offline, one failed download attempt and a clear error: no retries (counted, not timed)."
    import torch.hub
    tries, no_network = [], torch.hub.urlopen
    def counting(*a, **k): tries.append(a); return no_network(*a, **k)
    monkeypatch.setattr(torch.hub, 'urlopen', counting)
    with pytest.raises(TrunkWeightsError) as e: VGGPerceptualLoss(trunk='imagenet')
    assert len(tries) == 1
    msg = str(e.value)
    assert 'vgg19' in msg and str(tmp_path / 'torch') in msg and 'RESTOREKIT_TRUNK_DIR' in msg and "trunk='random'" in msg


# --------------------------------------------------------------------------------------------- RestorationLoss

def test_restoration_loss_builds_only_weighted_terms(offline_empty_cache):
    px = RestorationLoss(lpips=0)                                  # default weights otherwise: no network needed
    assert px.term_names == ['l1', 'ms_ssim'] and len(list(px.parameters())) == 0
    assert not hasattr(px, 'lpips') and not hasattr(px, 'vgg')
    with pytest.raises(TrunkWeightsError, match='alexnet') as e: RestorationLoss()   # the default needs LPIPS's ImageNet trunk
    assert 'weight of 0 for lpips/vgg drops' in str(e.value) and "trunk='random'" in str(e.value)
    with pytest.raises(TrunkWeightsError, match='vgg19'): RestorationLoss(lpips=0, vgg=1.0)
    with pytest.raises(ValueError, match='every weight is 0'): RestorationLoss(l1=0, ms_ssim=0, lpips=0)
    with pytest.raises(ValueError, match='>= 0'): RestorationLoss(ms_ssim=-0.1, lpips=0)
    with pytest.raises(ValueError, match='>= 0'): RestorationLoss(l1=float('nan'), lpips=0)


def test_restoration_loss_is_the_weighted_sum():
    torch.manual_seed(0)
    w = {'l1': 1.0, 'charbonnier': 0.5, 'ms_ssim': 0.2, 'lpips': 0.1, 'vgg': 0.05}
    loss = RestorationLoss(**w, trunk='random', vgg_layers=('conv2_2', 'conv3_4'))
    assert loss.term_names == list(LOSS_TERMS) and isinstance(loss.lpips, LPIPS)
    y = smooth_batch(3, 3, 40, 40); p = noisy(y, 0.1, clamp=False).requires_grad_()  # overshoots [0,1] a little
    total = loss(p, y)
    assert set(loss.last_terms) == set(w)
    assert all(t.ndim == 0 and not t.requires_grad for t in loss.last_terms.values())
    assert torch.allclose(total, sum(w[k] * loss.last_terms[k] for k in w), atol=1e-6)
    assert torch.allclose(loss.last_terms['l1'], l1_loss(p, y), atol=1e-7)
    assert torch.allclose(loss.last_terms['ms_ssim'], ms_ssim_loss(p, y), atol=1e-6)
    assert torch.allclose(loss.last_terms['vgg'], loss.vgg(p, y).mean(), atol=1e-6)
    assert torch.allclose(loss.last_terms['lpips'], loss.lpips(p.clamp(0, 1), y).mean(), atol=1e-6)
    total.backward()
    assert torch.isfinite(p.grad).all()
    loss.reduction = 'none'
    per = loss(p, y)
    assert per.shape == (3,) and torch.allclose(per.mean(), total, atol=1e-6)
    with pytest.raises(ValueError, match='RGB'): loss(y[:, :1], y[:, :1])
    gray = RestorationLoss(lpips=0, charbonnier=1.0)
    assert torch.isfinite(gray(y[:, :1], y[:, :1]))


# --------------------------------------------------------------------------------------------------------- fastai

def _dls(n=16, size=32, bs=4, seed=0):
    from fastai.data.core import DataLoaders
    y = smooth_batch(n, 3, size, size, seed=seed)
    x = noisy(y, 0.1, seed=seed + 1)
    ds = list(zip(x, y))
    return DataLoaders.from_dsets(ds[:n // 2], ds[n // 2:], bs=bs, device='cpu')


def _model():
    m = nn.Conv2d(3, 3, 3, padding=1); nn.init.dirac_(m.weight); nn.init.zeros_(m.bias)
    return m


def _learner(loss, **kw):
    import fastai.callback.progress  # noqa: F401  (adds Learner.no_bar)
    from fastai.learner import Learner
    return Learner(_dls(), _model(), loss_func=loss, **kw)


def test_fastai_one_column_per_term_train_and_valid():
    torch.manual_seed(0)
    loss = RestorationLoss(l1=1.0, ms_ssim=0.2, lpips=0.1, charbonnier=0.5, trunk='random')
    learn = _learner(loss, cbs=LossTermsCallback())
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    names = list(learn.recorder.metric_names)
    terms = ['l1', 'charbonnier', 'ms_ssim', 'lpips']
    assert names == ['epoch', 'train_loss'] + [f'train_{t}' for t in terms] + ['valid_loss'] + [f'valid_{t}' for t in terms] + ['time']
    rec = dict(zip(names[1:-1], learn.recorder.values[-1]))
    assert len(rec) == 10 and all(math.isfinite(v) for v in rec.values())
    w = loss.weights
    assert rec['valid_loss'] == pytest.approx(sum(w[t] * rec[f'valid_{t}'] for t in terms), rel=1e-5)
    # the valid columns are the batch-size-weighted means over the validation set
    learn.model.eval()
    with torch.no_grad():
        xs, ys = zip(*[(xb, yb) for xb, yb in learn.dls.valid])
        parts = [(loss(learn.model(xb), yb), dict(loss.last_terms), len(xb)) for xb, yb in zip(xs, ys)]
    n = sum(b for *_, b in parts)
    for t in terms:
        assert rec[f'valid_{t}'] == pytest.approx(sum(d[t].item() * b for _, d, b in parts) / n, rel=1e-5)
    # a second fit does not add the columns twice
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    assert list(learn.recorder.metric_names) == names


def test_fastai_single_batch_total_equals_weighted_terms():
    torch.manual_seed(0)
    loss = RestorationLoss(l1=1.0, ms_ssim=0.3, lpips=0.2, trunk='random')
    learn = _learner(loss, cbs=LossTermsCallback())
    xb, yb = learn.dls.one_batch()
    total = learn.loss_func(learn.model(xb), yb)
    assert torch.allclose(total, sum(loss.weights[k] * v for k, v in loss.last_terms.items()), atol=1e-6)


def test_fastai_loss_term_metrics_valid_columns_and_get_preds():
    loss = RestorationLoss(l1=1.0, ms_ssim=0.2, lpips=0)
    mets = loss_term_metrics(loss)
    assert [m.name for m in mets] == ['l1', 'ms_ssim'] and all(isinstance(m, LossTermMetric) for m in mets)
    learn = _learner(loss, metrics=mets)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    assert list(learn.recorder.metric_names) == ['epoch', 'train_loss', 'valid_loss', 'l1', 'ms_ssim', 'time']
    assert all(math.isfinite(v) for v in learn.recorder.values[-1])
    with learn.no_bar(): _, _, losses = learn.get_preds(with_loss=True)   # reduction='none' per sample
    assert losses.shape == (8,) and torch.isfinite(losses).all()
    assert loss.reduction == 'mean'


def test_fastai_callback_needs_a_restoration_loss():
    learn = _learner(nn.L1Loss(), cbs=LossTermsCallback())
    with pytest.raises(TypeError, match='RestorationLoss'), learn.no_bar(), learn.no_logging(): learn.fit(1)
    with pytest.raises(TypeError, match='RestorationLoss'): loss_term_metrics(nn.L1Loss())


def test_lpips_model_takes_a_module_as_well_as_a_folder():
    "A metric module (e.g. an `LPIPS`) for the lpips term is used as it is, frozen; a module without input_range is refused."
    torch.manual_seed(0)
    mine = LPIPS('alex', trunk='random', heads='random')
    loss = RestorationLoss(l1=0, ms_ssim=0, lpips=1, lpips_model=mine)
    assert loss.lpips is mine and not any(p.requires_grad for p in mine.parameters())
    x, y = torch.rand(2, 3, 40, 40), torch.rand(2, 3, 40, 40)
    assert torch.allclose(loss(x, y), mine(x, y).mean(), atol=1e-6)
    with pytest.raises(TypeError, match='lpips_model must be a metric module'): RestorationLoss(lpips=1, lpips_model=nn.Identity())
    with pytest.raises(TypeError, match='lpips_model must be'): RestorationLoss(lpips=1, lpips_model=3)


def test_twoafc_trunk_offline_message_names_the_weights_keyword(offline_empty_cache, monkeypatch):
    "`twoafc_model` takes its trunk weights as `weights=`: the offline error must say so (not `trunk=`)."
    from restorekit.twoafc_train import twoafc_model
    monkeypatch.setenv('RESTOREKIT_OFFLINE', '1')
    with pytest.raises(TrunkWeightsError) as e: twoafc_model('alex', 'lin')
    assert "weights='random'" in str(e.value) and "trunk='random'" not in str(e.value)
