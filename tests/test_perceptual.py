"""`restorekit.perceptual`: trunk loading and LPIPS.

Parity with the `lpips` package (the reference implementation) is checked with the same random trunk copied into
both and the official heads: distances to 1e-6 for all three networks (mean and spatial, both versions and input
ranges), and input gradients. ImageNet trunk weights need a download, so the published-value check on the LPIPS
repository's example images runs only where torchvision's vgg16 file is cached (or in $RESTOREKIT_TRUNK_DIR) and
skips otherwise; on the same images the random-trunk parity runs everywhere the shared data is.
"""
from __future__ import annotations

import pickle
import urllib.error
import warnings

import pytest
import torch
import torchvision
from torch import nn

import restorekit.perceptual as P
from restorekit.core import load_image, shared_data
from restorekit.perceptual import (
    LPIPS,
    LPIPS_NETS,
    NORM_EPS,
    TRUNK_ARCHS,
    TrunkWeightsError,
    WeightsMismatchError,
    find_trunk_file,
    load_strict,
    load_trunk,
    lpips_heads_file,
    trunk_file,
)

lpips = pytest.importorskip('lpips')


def reference(net, **kw):
    "The reference `lpips.LPIPS` with a random trunk (seeded), quietly."
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')   # torchvision's `pretrained=` deprecation inside lpips
        return lpips.LPIPS(net=net, pnet_rand=True, verbose=False, **kw)


def trunk_state(ref):
    "The reference trunk's weights as a torchvision `features` state dict ('slice2.3.weight' -> '3.weight')."
    return {k.split('.', 1)[1]: v for k, v in ref.net.state_dict().items()}


@pytest.fixture(scope='module', params=LPIPS_NETS)
def pair(request):
    "(net, reference, restorekit LPIPS) sharing one random trunk and the official v0.1 heads."
    ref = reference(request.param)
    return request.param, ref, LPIPS(request.param, trunk=trunk_state(ref))


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))




# ---------------------------------------------------------------------------------------------------- trunks

@pytest.mark.parametrize('arch', TRUNK_ARCHS)
def test_random_trunk_is_frozen_features(arch):
    f = load_trunk(arch, 'random')
    ref = getattr(torchvision.models, arch)().features
    assert isinstance(f, nn.Sequential)
    assert [type(m) for m in f] == [type(m) for m in ref]
    assert {k: v.shape for k, v in f.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert not f.training and not any(p.requires_grad for p in f.parameters())
    assert all(torch.isfinite(p).all() and p.abs().sum() > 0 for n, p in f.named_parameters() if n.endswith('weight'))


@pytest.mark.parametrize('what', ['full', 'features'])
def test_trunk_from_file(tmp_path, what):
    m = torchvision.models.squeezenet1_1()
    sd = m.state_dict() if what == 'full' else m.features.state_dict()
    torch.save(sd, tmp_path/'w.pth')
    f = load_trunk('squeezenet1_1', tmp_path/'w.pth')
    for k, v in m.features.state_dict().items(): assert torch.equal(f.state_dict()[k], v)
    f2 = load_trunk('squeezenet1_1', str(tmp_path/'w.pth'))     # str paths too
    assert torch.equal(f2[0].weight, m.features[0].weight)
    f3 = load_trunk('squeezenet1_1', sd)                          # and a state dict
    assert torch.equal(f3[0].weight, m.features[0].weight)


def test_trunk_file_loads_weights_only(tmp_path):
    class Evil:
        def __reduce__(self): return (print, ('unpickled arbitrary code',))
    with open(tmp_path/'evil.pth', 'wb') as f: pickle.dump({'0.weight': Evil()}, f, protocol=2)
    with pytest.raises(TrunkWeightsError, match='could not read alexnet trunk weights'):
        load_trunk('alexnet', tmp_path/'evil.pth')


def test_trunk_wrong_keys(tmp_path):
    sd = torchvision.models.alexnet().state_dict()
    renamed = {k.replace('features.', 'body.'): v for k, v in sd.items()}
    with pytest.raises(WeightsMismatchError, match=r'missing keys: 0\.weight.*unexpected keys: body\.0\.weight') as e:
        load_trunk('alexnet', renamed)
    assert '0.weight' in e.value.missing and 'body.0.weight' in e.value.unexpected
    extra = dict(sd, **{'features.99.weight': torch.zeros(1)})
    with pytest.raises(WeightsMismatchError, match=r'unexpected keys: features\.99\.weight'):
        load_trunk('alexnet', extra)
    torch.save(sd, tmp_path/'alex.pth')
    with pytest.raises(WeightsMismatchError, match=r"alex\.pth does not match torchvision's vgg16.*wrong shapes: features\.0\.weight"):
        load_trunk('vgg16', tmp_path/'alex.pth')
    with pytest.raises(WeightsMismatchError, match='not a state dict'):
        load_trunk('alexnet', {'0.weight': 'not a tensor'})


def test_trunk_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='choose from alexnet, vgg16, vgg19, squeezenet1_1'): load_trunk('resnet18', 'random')
    with pytest.raises(TrunkWeightsError, match='is not a file'): load_trunk('alexnet', tmp_path/'missing.pth')
    with pytest.raises(TypeError, match='a path or a state dict'): load_trunk('alexnet', 3)


def test_trunk_file_names():
    assert [trunk_file(a) for a in TRUNK_ARCHS] == ['alexnet-owt-7be5be79.pth', 'vgg16-397923af.pth',
                                                    'vgg19-dcbb9e9d.pth', 'squeezenet1_1-b8a52dc0.pth']


def _check_offline_message(msg, tmp_path):
    for s in ("'alexnet-owt-7be5be79.pth'", str(tmp_path/'torch'/'hub'/'checkpoints'), 'RESTOREKIT_TRUNK_DIR',
              "trunk='random'", 'trunk=<path', 'https://download.pytorch.org/models/alexnet-owt-7be5be79.pth'):
        assert s in msg, (s, msg)


def test_imagenet_offline_flag(offline_empty_cache, monkeypatch):
    monkeypatch.setenv('RESTOREKIT_OFFLINE', '1')
    def no_download(*a, **k): raise AssertionError('a download was attempted')
    monkeypatch.setattr(torchvision.models._api, 'load_state_dict_from_url', no_download)
    assert find_trunk_file('alexnet') is None
    with pytest.raises(TrunkWeightsError, match='RESTOREKIT_OFFLINE is set') as e: load_trunk('alexnet')
    _check_offline_message(str(e.value), offline_empty_cache)
    with pytest.raises(TrunkWeightsError): LPIPS('alex')          # what LPIPS() does offline by default


def test_imagenet_failed_download_is_one_clear_error(offline_empty_cache, monkeypatch):
    "The download failing (no network: urllib raises) becomes a TrunkWeightsError chained to the urllib error."
    calls = []
    def fail(url, *a, **k):
        calls.append((url, k)); raise urllib.error.URLError('[Errno -2] Name or service not known')
    monkeypatch.setattr(torchvision.models._api, 'load_state_dict_from_url', fail)
    with pytest.raises(TrunkWeightsError, match='the download failed: URLError') as e: load_trunk('alexnet')
    _check_offline_message(str(e.value), offline_empty_cache)
    assert isinstance(e.value.__cause__, urllib.error.URLError)
    assert calls[0][0].endswith('alexnet-owt-7be5be79.pth')
    assert calls[0][1].get('check_hash') is True and calls[0][1].get('weights_only') is True


def test_imagenet_from_cache_and_env_dir(offline_empty_cache, monkeypatch):
    m = torchvision.models.alexnet()
    def no_download(*a, **k): raise AssertionError('a download was attempted')
    monkeypatch.setattr(torchvision.models._api, 'load_state_dict_from_url', no_download)
    cache = offline_empty_cache/'torch'/'hub'/'checkpoints'; cache.mkdir(parents=True)
    torch.save(m.state_dict(), cache/'alexnet-owt-7be5be79.pth')          # torch's hub cache
    assert find_trunk_file('alexnet') == cache/'alexnet-owt-7be5be79.pth'
    assert torch.equal(load_trunk('alexnet')[0].weight, m.features[0].weight)
    m2 = torchvision.models.alexnet()
    (offline_empty_cache/'trunks').mkdir()
    torch.save(m2.state_dict(), offline_empty_cache/'trunks'/'alexnet-owt-7be5be79.pth')
    monkeypatch.setenv('RESTOREKIT_TRUNK_DIR', str(offline_empty_cache/'trunks'))      # takes precedence over the cache
    assert torch.equal(load_trunk('alexnet')[0].weight, m2.features[0].weight)
    torch.save({'nonsense': torch.zeros(1)}, offline_empty_cache/'trunks'/'alexnet-owt-7be5be79.pth')
    with pytest.raises(WeightsMismatchError, match=r'missing keys: 0\.weight.*unexpected keys: nonsense'): load_trunk('alexnet')


def test_load_strict():
    m = nn.Linear(2, 3)
    with pytest.raises(WeightsMismatchError, match=r'f\.pth does not match a layer: missing keys: bias; unexpected keys: b$'):
        load_strict(m, {'weight': torch.zeros(3, 2), 'b': torch.zeros(3)}, 'a layer', 'f.pth')
    many = {f'k{i}': torch.zeros(1) for i in range(20)}
    with pytest.raises(WeightsMismatchError, match=r'\(20 in all\)'): load_strict(m, many, 'a layer', 'x')


# ---------------------------------------------------------------------------------------------------- LPIPS parity

@pytest.mark.parametrize('shape', [(3, 3, 64, 64), (2, 3, 40, 72)])
def test_parity_with_lpips(pair, shape):
    _, ref, lp = pair
    x, y = rand(*shape, seed=1), rand(*shape, seed=2)
    with torch.no_grad(): got, want = lp(x, y), ref(x, y, normalize=True)
    assert got.shape == (shape[0],) and want.shape == (shape[0], 1, 1, 1)
    assert (got - want.flatten()).abs().max() < 1e-6
    assert got.min() > 0.01                         # not trivially equal


def test_parity_input_range_minus1_1(pair):
    net, ref, lp = pair
    x, y = rand(2, 3, 48, 48, seed=3) * 2 - 1, rand(2, 3, 48, 48, seed=4) * 2 - 1
    lp2 = LPIPS(net, trunk=lp.trunk.state_dict(), input_range=(-1, 1))
    with torch.no_grad(): assert (lp2(x, y) - ref(x, y).flatten()).abs().max() < 1e-6


def test_parity_spatial(pair):
    net, ref, lp = pair
    refs = reference(net, spatial=True); refs.net.load_state_dict(ref.net.state_dict())
    sp = LPIPS(net, trunk=lp.trunk.state_dict(), spatial=True)
    x, y = rand(2, 3, 64, 80, seed=5), rand(2, 3, 64, 80, seed=6)
    with torch.no_grad():
        m, want = sp(x, y), refs(x, y, normalize=True)
        assert m.shape == want.shape == (2, 1, 64, 80)
        assert (m - want).abs().max() < 1e-6


def test_parity_version_0_0():
    ref = reference('alex', version='0.0')
    lp = LPIPS('alex', version='0.0', trunk=trunk_state(ref))
    x, y = rand(2, 3, 64, 64, seed=7), rand(2, 3, 64, 64, seed=8)
    with torch.no_grad(): assert (lp(x, y) - ref(x, y, normalize=True).flatten()).abs().max() < 1e-6
    assert lpips_heads_file('alex', '0.0').parent.name == 'v0.0'


def test_gradient_parity(pair):
    "The fused backward gives the reference's input gradient (autograd through its plain formula)."
    _, ref, lp = pair
    x, y = rand(2, 3, 64, 64, seed=9), rand(2, 3, 64, 64, seed=10)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    lp(xa, y).sum().backward()
    ref(xb, y, normalize=True).sum().backward()
    scale = xb.grad.abs().max()
    assert scale > 0
    assert ((xa.grad - xb.grad).abs().max() / scale) < 1e-4


def test_concat_and_separate_trunk_passes_agree(pair):
    net, _, lp = pair
    x, y = rand(6, 3, 48, 48, seed=11), rand(6, 3, 48, 48, seed=12)
    lp2 = LPIPS(net, trunk=lp.trunk.state_dict())
    lp2.batch_concat_max = 0           # x and y through the trunk separately
    lp.batch_concat_max = 100          # ... and as one concatenated batch
    try:
        with torch.no_grad(): assert (lp(x, y) - lp2(x, y)).abs().max() < 1e-6
    finally: del lp.batch_concat_max  # back to the class default


def test_examples_parity_random_trunk(pair):
    "The LPIPS repository's example images: restorekit equals the reference with a shared random trunk."
    data = shared_data()
    ex = data/'lpips_examples' if data else None
    if ex is None or not (ex/'ex_ref.png').is_file(): pytest.skip('shared data lpips_examples not available')
    _, ref, lp = pair
    r0, p0, p1 = (load_image(ex/f'ex_{n}.png')[None] for n in ('ref', 'p0', 'p1'))
    x, y = torch.cat([r0, r0]), torch.cat([p0, p1])
    with torch.no_grad(): assert (lp(x, y) - ref(x, y, normalize=True).flatten()).abs().max() < 1e-6


def test_examples_published_values():
    "LPIPS-vgg v0.1 with the ImageNet trunk on the example images: 0.569 and 0.422 as published (3 decimals)."
    data = shared_data()
    ex = data/'lpips_examples' if data else None
    if ex is None or not (ex/'ex_ref.png').is_file(): pytest.skip('shared data lpips_examples not available')
    if find_trunk_file('vgg16') is None:
        pytest.skip(f"torchvision's ImageNet vgg16 weights ({trunk_file('vgg16')}) are not cached in the torch hub cache "
                    'or $RESTOREKIT_TRUNK_DIR (offline machine)')
    r0, p0, p1 = (load_image(ex/f'ex_{n}.png')[None] for n in ('ref', 'p0', 'p1'))
    with torch.no_grad(): d = LPIPS('vgg')(torch.cat([r0, r0]), torch.cat([p0, p1]))
    assert d.tolist() == pytest.approx([0.569, 0.422], abs=5e-4)


# ---------------------------------------------------------------------------------------------------- as a loss

def test_frozen_and_always_eval():
    lp = LPIPS('squeeze', trunk='random')
    assert not any(p.requires_grad for p in lp.parameters())
    assert lp.train().training is False and not any(m.training for m in lp.modules())
    parent = nn.Sequential(nn.Conv2d(3, 3, 1), lp)
    parent.train()
    assert parent[0].training and not any(m.training for m in lp.modules())


def test_gradient_reaches_input_only():
    lp = LPIPS('alex', trunk='random')
    model = nn.Conv2d(3, 3, 3, padding=1)
    x, y = rand(2, 3, 64, 64, seed=13), rand(2, 3, 64, 64, seed=14)
    loss = lp(model(x).clamp(0, 1), y).mean()
    loss.backward()
    assert model.weight.grad is not None and model.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in lp.parameters())
    # both inputs with gradients (concatenated pass)
    xa, ya = x.clone().requires_grad_(), y.clone().requires_grad_()
    lp(xa, ya).sum().backward()
    assert xa.grad.abs().sum() > 0 and ya.grad.abs().sum() > 0


def test_no_graph_without_grad():
    lp = LPIPS('alex', trunk='random')
    assert not lp(rand(1, 3, 64, 64), rand(1, 3, 64, 64, seed=1)).requires_grad


@pytest.mark.parametrize('net', LPIPS_NETS)
def test_finite_gradients_constant_image(net):
    "Backward through LPIPS(x, x) for constant images (incl. one that zeroes every feature) is finite."
    lp = LPIPS(net, trunk='random', input_range=(-1, 1))
    for c in (torch.tensor(P._SHIFT), torch.tensor([0.5, 0.5, 0.5]), torch.zeros(3)):   # _SHIFT: scaled to exactly 0
        x = c.view(1, 3, 1, 1).expand(2, 3, 40, 40).clone().requires_grad_()
        d = lp(x, x.detach())
        d.sum().backward()
        assert torch.isfinite(x.grad).all() and d.abs().max() < 1e-6


def test_normalisation_finite_at_zero_features():
    "The per-layer term is differentiable at all-zero features; the reference's normalisation is NaN there."
    f = torch.zeros(2, 16, 5, 5, requires_grad=True)
    P._layer_distance(f[:1], f[1:], torch.rand(1, 16, 1, 1), None).sum().backward()
    assert torch.isfinite(f.grad).all()
    g = torch.zeros(1, 16, 5, 5, requires_grad=True)
    lpips.normalize_tensor(g).sum().backward()
    assert torch.isnan(g.grad).all()
    # one side zero, the other not: a large but finite gradient (1/sqrt(eps) = 1e10, like the reference's 1/1e-10)
    a, b = torch.zeros(1, 16, 5, 5, requires_grad=True), torch.rand(1, 16, 5, 5)
    P._layer_distance(a, b, torch.rand(1, 16, 1, 1), None).sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().max() <= 2 / NORM_EPS ** 0.5


@pytest.mark.parametrize('spatial', [None, (7, 9)])
def test_fused_backward_gradcheck(spatial):
    fx, fy = (torch.rand(2, 6, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(s), requires_grad=True)
              for s in (0, 1))
    w = torch.rand(1, 6, 1, 1, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: P._layer_distance(a, b, w, spatial), (fx, fy))


def test_bfloat16_autocast():
    lp = LPIPS('alex', trunk='random')
    x, y = rand(2, 3, 64, 64, seed=15), rand(2, 3, 64, 64, seed=16)
    with torch.no_grad():
        full = lp(x, y)
        with torch.autocast('cpu', dtype=torch.bfloat16): half = lp(x, y)
    assert torch.isfinite(half).all()
    assert (half.float() - full).abs().max() < 0.05 * full.abs().max()


# ---------------------------------------------------------------------------------------------------- inputs

def test_input_range_checks():
    lp = LPIPS('alex', trunk='random')
    x, y = rand(1, 3, 64, 64), rand(1, 3, 64, 64, seed=1)
    with pytest.raises(ValueError, match=r'outside the declared input_range=\(0, 1\); it looks like \[-1,1\]: pass input_range=\(-1, 1\)'):
        lp(x * 2 - 1, y)
    with pytest.raises(ValueError, match='divide by 255'): lp(x * 255, y)
    with pytest.raises(ValueError, match=r'^y has values in \['): lp(x, y + 0.5)
    xo = x.clone(); xo[0, 0, 0, 0] = 1 + 5e-4
    lp(xo, y)                                                      # within the 1e-3 tolerance
    xo[0, 0, 0, 0] = -2e-3
    with pytest.raises(ValueError, match=r'\[-0\.002, '): lp(xo, y)
    with pytest.raises(ValueError, match='NaN or Inf'): lp(x.masked_fill(x > 0.99, float('nan')), y)
    lm = LPIPS('alex', trunk='random', input_range=(-1, 1))
    lm(x * 2 - 1, y * 2 - 1)
    with pytest.raises(ValueError, match=r'input_range=\(-1, 1\); clamp it'): lm(x * 3, y)
    for bad in ((1, 0), (0,), (0, 1, 2), 'zero-one', (0, 'a')):
        with pytest.raises(ValueError, match='input_range must be'): LPIPS('alex', trunk='random', input_range=bad)


def test_shape_checks():
    lp = LPIPS('alex', trunk='random')
    x = rand(2, 3, 64, 64)
    with pytest.raises(ValueError, match=r'\(B,3,H,W\) batch, got shape \(3, 64, 64\) \(add a batch dimension'): lp(x[0], x[0])
    with pytest.raises(ValueError, match='repeat a gray image'): lp(x[:, :1], x[:, :1])
    with pytest.raises(ValueError, match='same shape'): lp(x, x[:1])
    with pytest.raises(ValueError, match='same shape'): lp(x, x[..., :60])
    with pytest.raises(TypeError, match='float tensor, got torch.uint8'): lp((x * 255).byte(), x)
    with pytest.raises(TypeError, match='torch.Tensor'): lp(x.numpy(), x)
    with pytest.raises(ValueError, match='empty batch'): lp(x[:0], x[:0])


@pytest.mark.parametrize('net', LPIPS_NETS)
def test_min_size_is_exact(net):
    "`min_size` is the smallest side the trunk takes: one less fails in torch itself, and is refused clearly."
    lp = LPIPS(net, trunk='random')
    s = lp.min_size
    lp(rand(1, 3, s, s + 5), rand(1, 3, s, s + 5, seed=1))                 # runs
    arch, cuts = P._NETS[net][:2]
    with torch.device('meta'):
        trunk = getattr(torchvision.models, arch)().features[:cuts[-1]]
        for shape in ((s, s), (s, 300), (300, s)): trunk(torch.empty(1, 3, *shape))
        for shape in ((s - 1, s - 1), (s - 1, 300), (300, s - 1)):
            with pytest.raises(RuntimeError): trunk(torch.empty(1, 3, *shape))   # the trunk itself cannot
    with pytest.raises(ValueError, match=f'needs at least {s}x{s}'): lp(rand(1, 3, s + 5, s - 1), rand(1, 3, s + 5, s - 1))


def test_bad_net_and_version():
    with pytest.raises(ValueError, match='choose from alex, vgg, squeeze'): LPIPS('resnet', trunk='random')
    with pytest.raises(ValueError, match="choose '0.1' or '0.0'"): LPIPS('alex', version='1.0', trunk='random')


# ---------------------------------------------------------------------------------------------------- heads

def test_official_heads_loaded(pair):
    _, ref, lp = pair
    for k, h in enumerate(lp.heads): assert torch.equal(h.weight, ref.lins[k].model[1].weight)


def test_heads_strict(tmp_path):
    official = torch.load(lpips_heads_file('alex'), map_location='cpu', weights_only=True)
    torch.save(official, tmp_path/'h.pth')
    a = LPIPS('alex', trunk='random')
    b = LPIPS('alex', trunk=a.trunk.state_dict(), heads=tmp_path/'h.pth')       # a custom heads path
    x, y = rand(1, 3, 64, 64), rand(1, 3, 64, 64, seed=1)
    assert torch.equal(a(x, y), b(x, y))
    with pytest.raises(WeightsMismatchError, match=r'unexpected keys: lin5\.model\.1\.weight, lin6\.model\.1\.weight'):
        LPIPS('alex', trunk='random', heads=lpips_heads_file('squeeze'))
    with pytest.raises(WeightsMismatchError, match=r'wrong shapes: lin1\.model\.1\.weight \(1, 128, 1, 1\) \(expected \(1, 192, 1, 1\)\)'):
        LPIPS('alex', trunk='random', heads=lpips_heads_file('vgg'))
    renamed = {k.replace('lin', 'layer'): v for k, v in official.items()}
    with pytest.raises(WeightsMismatchError, match=r'missing keys: lin0\.model\.1\.weight.*unexpected keys: layer0\.model\.1\.weight'):
        LPIPS('alex', trunk='random', heads=renamed)
    partial = dict(official); partial.pop('lin4.model.1.weight')
    with pytest.raises(WeightsMismatchError, match=r'missing keys: lin4\.model\.1\.weight$'):
        LPIPS('alex', trunk='random', heads=partial)
    with pytest.raises(ValueError, match='non-negative'):
        LPIPS('alex', trunk='random', heads={k: v - 1 for k, v in official.items()})
    with pytest.raises(FileNotFoundError, match='is not a file'): LPIPS('alex', trunk='random', heads=tmp_path/'none.pth')


def test_random_heads_non_negative():
    lp = LPIPS('vgg', trunk='random', heads='random')
    for h, c in zip(lp.heads, lp.chns):
        assert h.weight.shape == (1, c, 1, 1) and h.weight.min() >= 0


def test_heads_without_lpips_package(monkeypatch):
    real = P.importlib.util.find_spec
    monkeypatch.setattr(P.importlib.util, 'find_spec', lambda name, *a: None if name == 'lpips' else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match='pip install lpips'): LPIPS('alex', trunk='random')
    LPIPS('alex', trunk='random', heads='random')       # random heads need no package


# ---------------------------------------------------------------------------------------------------- misc

def test_spatial_mean_is_distance():
    lp = LPIPS('squeeze', trunk='random')
    sp = LPIPS('squeeze', trunk=lp.trunk.state_dict(), spatial=True)
    x, y = rand(2, 3, 64, 64), rand(2, 3, 64, 64, seed=1)
    with torch.no_grad():
        m = sp(x, y)
        # bilinear upsampling keeps a map's mean exactly for integer factors, up to border effects otherwise
        assert m.shape == (2, 1, 64, 64) and ((m.mean((1, 2, 3)) - lp(x, y)).abs() < 1e-3 * lp(x, y)).all()


def test_state_dict_round_trip(tmp_path):
    lp = LPIPS('alex', trunk='random')
    torch.save(lp.state_dict(), tmp_path/'lp.pth')
    lp2 = LPIPS('alex', trunk='random', heads='random')
    lp2.load_state_dict(torch.load(tmp_path/'lp.pth', weights_only=True))
    x, y = rand(1, 3, 64, 64), rand(1, 3, 64, 64, seed=1)
    assert torch.equal(lp(x, y), lp2(x, y))
    assert set(lp.state_dict()) == {k for k in lp.state_dict() if k.startswith(('trunk.', 'heads.'))}
