"""`restorekit.models`: architectures, factory, fastai splitter, weight loading and saving.

Shapes are checked for every architecture at every scale with tiny widths. The official IMDN checkpoints (shared
data) must load strictly and reproduce the published Set5 figures on the Y channel from the MATLAB-bicubic RGB LR
PNGs; those tests skip where the shared data is absent.
"""
from __future__ import annotations

import os
import pickle
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from restorekit.core import load_image, shared_data
from restorekit.metrics import psnr, ssim
from restorekit.models import (
    ARCHS,
    EDSR,
    IMDN,
    SCALES,
    ChannelLayerNorm,
    RealPLKSR,
    SRVGGNetCompact,
    UnsafeWeightsError,
    create_model,
    load_spandrel,
    load_weights,
    model_splitter,
    param_count,
    read_state_dict,
    save_weights,
    unwrap_state_dict,
)
from restorekit.perceptual import WeightsMismatchError

TINY = {'edsr_baseline': {'n_feats': 8, 'n_blocks': 2}, 'edsr': {'n_feats': 8, 'n_blocks': 2},
        'srvgg_compact': {'num_feat': 8, 'num_conv': 2}, 'realplksr': {'dim': 8, 'n_blocks': 2, 'kernel_size': 5},
        'realplksr_tiny': {'dim': 8, 'n_blocks': 2}, 'imdn': {'nf': 8, 'num_modules': 2}}


def tiny(arch, scale=2, seed=0):
    return create_model(arch, scale, seed=seed, **TINY[arch])


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_covers_every_arch():
    assert set(TINY) == set(ARCHS)


# ---------------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize('scale', SCALES)
@pytest.mark.parametrize('arch', list(ARCHS))
def test_output_shape(arch, scale):
    m = tiny(arch, scale)
    x = torch.rand(2, 3, 11, 13)
    with torch.no_grad(): y = m(x)
    assert y.shape == (2, 3, 11 * scale, 13 * scale)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


@pytest.mark.parametrize('arch', list(ARCHS))
def test_backward(arch):
    m = tiny(arch, 2)
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    m(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize('arch', list(ARCHS))
def test_eval_matches_train_mode(arch):
    "No batch norm and no in-place tricks: the eval-mode output is the train-mode output (dropout 0)."
    m = tiny(arch, 3)
    x = torch.rand(1, 3, 9, 7)
    with torch.no_grad(): a = m.train()(x)
    with torch.inference_mode(): b = m.eval()(x)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize('arch', list(ARCHS))
def test_bad_scale(arch):
    with pytest.raises(ValueError, match=r'scale must be one of \(1, 2, 3, 4\), got 8'): create_model(arch, 8)


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError) as e: create_model('swinir', 4)
    assert "unknown architecture 'swinir'" in str(e.value)
    for name in ARCHS: assert name in str(e.value)


def test_unknown_option():
    with pytest.raises(TypeError, match='edsr_baseline: unknown option num_feat; its options are n_feats, n_blocks'):
        create_model('edsr_baseline', 2, num_feat=8)


# ---------------------------------------------------------------------------------------------------- published sizes


def test_param_counts():
    with torch.device('meta'):
        assert param_count(create_model('edsr_baseline', 2)) == 1_369_859
        assert param_count(create_model('edsr_baseline', 4)) == 1_517_571
        assert param_count(create_model('edsr', 4)) == 43_089_923
        assert param_count(create_model('srvgg_compact', 4)) == 621_424
        assert param_count(create_model('realplksr', 4)) == 7_389_680
        assert [param_count(create_model('imdn', s)) for s in (2, 3, 4)] == [694_404, 703_059, 715_176]
    m = EDSR(2, n_feats=8, n_blocks=1)
    m.head.requires_grad_(False)
    assert param_count(m, trainable=True) == param_count(m) - (3 * 8 * 9 + 8)


def test_edsr_layout():
    m = EDSR(4, n_feats=8, n_blocks=2, res_scale=0.1)
    sd = m.state_dict()
    for k in ('sub_mean.weight', 'sub_mean.bias', 'add_mean.bias', 'head.0.weight', 'body.0.body.0.weight', 'body.1.body.2.bias',
              'body.2.weight', 'tail.0.0.weight', 'tail.0.2.weight', 'tail.1.weight'):
        assert k in sd, k
    torch.testing.assert_close(sd['sub_mean.bias'], -torch.tensor([0.4488, 0.4371, 0.4040]))
    assert not any(p is m.sub_mean.bias or p is m.add_mean.weight for p in m.parameters())
    assert m.body[0].res_scale == 0.1
    assert 'tail.0.0.weight' in EDSR(3, n_feats=8, n_blocks=1).state_dict()
    assert EDSR(3, n_feats=8, n_blocks=1).state_dict()['tail.0.0.weight'].shape == (72, 8, 3, 3)
    assert isinstance(EDSR(1, n_feats=8, n_blocks=1).tail[0], nn.Identity)


def test_edsr_rgb_range_255_is_scaled_biases():
    torch.manual_seed(0)
    b = EDSR(2, n_feats=8, n_blocks=2, rgb_range=255)
    a = EDSR(2, n_feats=8, n_blocks=2)
    a.load_state_dict({k: v / 255 if k.endswith('bias') else v for k, v in b.state_dict().items()})
    x = torch.rand(1, 3, 6, 6)
    torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-5)


def test_nearest_skip_srvgg_and_realplksr():
    x = torch.rand(1, 3, 5, 4)
    for m, last in ((SRVGGNetCompact(3, num_feat=8, num_conv=1), None), (RealPLKSR(3, dim=8, n_blocks=1, kernel_size=3), None)):
        last = m.head_modules()[0]
        with torch.no_grad():
            last.weight.zero_(); last.bias.zero_()
            torch.testing.assert_close(m(x), F.interpolate(x, scale_factor=3, mode='nearest'), atol=0, rtol=0)


def test_realplksr_options():
    m = RealPLKSR(2, dim=8, n_blocks=1, kernel_size=5, use_ea=False, layer_norm=True)
    assert isinstance(m.feats[1].attn, nn.Identity) and isinstance(m.feats[1].norm, ChannelLayerNorm)
    assert m.feats[1].lk.conv.weight.shape == (2, 2, 5, 5)
    g = RealPLKSR(2, dim=8, n_blocks=1, kernel_size=5, norm_groups=2)
    assert isinstance(g.feats[1].norm, nn.GroupNorm) and g.feats[1].norm.num_groups == 2
    assert {k: v.shape for k, v in m.state_dict().items() if 'attn' not in k} == \
           {k: v.shape for k, v in g.state_dict().items() if 'attn' not in k}      # norm names and shapes agree
    with pytest.raises(ValueError, match='kernel_size must be odd'): RealPLKSR(2, kernel_size=16)
    with pytest.raises(ValueError, match='leaves no channel'): RealPLKSR(2, dim=8, split_ratio=0.1)
    with pytest.raises(ValueError, match='not divisible by norm_groups=4'): RealPLKSR(2, dim=6)
    assert len(create_model('realplksr_tiny', 2, dim=8).feats) == 12 + 3


def test_plk_conv_leaves_other_channels():
    m = RealPLKSR(2, dim=8, n_blocks=1, kernel_size=5)
    lk = m.feats[1].lk
    x = torch.rand(1, 8, 6, 6)
    y = lk(x)
    torch.testing.assert_close(y[:, 2:], x[:, 2:], atol=0, rtol=0)
    torch.testing.assert_close(y[:, :2], lk.conv(x[:, :2]))


# ---------------------------------------------------------------------------------------------------- seeds


@pytest.mark.parametrize('arch', list(ARCHS))
def test_seeded_init_is_deterministic_and_leaves_global_rng(arch):
    state = torch.random.get_rng_state()
    a, b, c = tiny(arch, seed=0), tiny(arch, seed=0), tiny(arch, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert same_state(a, b)
    assert not same_state(a, c)


# ---------------------------------------------------------------------------------------------------- splitter


@pytest.mark.parametrize('arch', list(ARCHS))
def test_splitter_groups(arch):
    m = tiny(arch, 2)
    body, head = model_splitter(m)
    ids = [id(p) for p in m.parameters()]
    assert sorted(map(id, body + head)) == sorted(ids) and not set(map(id, body)) & set(map(id, head))
    want = {id(p) for h in m.head_modules() for p in h.parameters()}
    assert set(map(id, head)) == want and head


def test_splitter_unwraps_and_refuses():
    m = tiny('imdn')
    assert [len(g) for g in model_splitter(nn.DataParallel(m))] == [len(g) for g in model_splitter(m)]
    with pytest.raises(TypeError, match=r'needs a model with head_modules\(\)'): model_splitter(nn.Linear(2, 2))


@pytest.mark.parametrize('arch', list(ARCHS))
def test_learner_freeze_trains_head_only(arch):
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    ds = [(torch.rand(3, 8, 8), torch.rand(3, 16, 16)) for _ in range(4)]
    dls = DataLoaders(DataLoader(ds, bs=2), DataLoader(ds, bs=2), device='cpu')
    learn = Learner(dls, tiny(arch, 2), loss_func=F.l1_loss, splitter=model_splitter)
    learn.freeze()
    body, head = model_splitter(learn.model)
    assert not any(p.requires_grad for p in body)
    assert all(p.requires_grad for p in head)
    before = [p.detach().clone() for p in body + head]
    with learn.no_logging(): learn.fit(1, 1e-2)
    after = body + head
    assert all(torch.equal(b, a) for b, a in zip(before[:len(body)], after[:len(body)]))
    assert any(not torch.equal(b, a) for b, a in zip(before[len(body):], after[len(body):]))
    learn.unfreeze()
    assert all(p.requires_grad for p in learn.model.parameters())


# ---------------------------------------------------------------------------------------------------- weights


@pytest.mark.parametrize('arch', list(ARCHS))
def test_safetensors_round_trip(tmp_path, arch):
    src = tiny(arch, 2, seed=0)
    p = save_weights(src, tmp_path / 'w.safetensors', metadata={'arch': arch, 'scale': 2})
    assert p == tmp_path / 'w.safetensors' and [f.name for f in tmp_path.iterdir()] == ['w.safetensors']
    dst = load_weights(tiny(arch, 2, seed=1), p)
    assert same_state(src, dst)
    from safetensors import safe_open
    with safe_open(str(p), 'pt') as f: assert f.metadata() == {'format': 'pt', 'arch': arch, 'scale': '2'}


def test_save_is_atomic(tmp_path, monkeypatch):
    "A failure while writing leaves the previous file intact and no temp file."
    import safetensors.torch
    src = tiny('imdn', seed=0)
    p = save_weights(src, tmp_path / 'w.safetensors')
    old = p.read_bytes()
    import restorekit.core
    real_replace = restorekit.core.os.replace
    def boom(*a, **k): raise OSError('disk full')
    monkeypatch.setattr(restorekit.core.os, 'replace', boom)
    with pytest.raises(OSError, match='disk full'): save_weights(tiny('imdn', seed=1), p)
    monkeypatch.setattr(restorekit.core.os, 'replace', real_replace)
    assert p.read_bytes() == old and [f.name for f in tmp_path.iterdir()] == ['w.safetensors']
    assert safetensors.torch.load_file(p).keys() == src.state_dict().keys()


def test_save_state_dict_and_refuse_other_suffix(tmp_path):
    src = tiny('edsr', seed=0)
    save_weights(src.state_dict(), tmp_path / 'w.safetensors')
    assert same_state(load_weights(tiny('edsr', seed=1), tmp_path / 'w.safetensors'), src)
    with pytest.raises(ValueError, match='writes .safetensors files'): save_weights(src, tmp_path / 'w.pth')


@pytest.mark.parametrize('legacy', [False, True])
def test_pth_round_trip(tmp_path, legacy):
    src = tiny('srvgg_compact', seed=0)
    torch.save(src.state_dict(), tmp_path / 'w.pth', _use_new_zipfile_serialization=not legacy)
    assert same_state(load_weights(tiny('srvgg_compact', seed=1), tmp_path / 'w.pth'), src)


@pytest.mark.parametrize('wrap', ['params_ema', 'params', 'state_dict', 'model', 'module.', '_orig_mod.', 'model+module.', 'extra'])
def test_wrappers_and_prefixes(tmp_path, wrap):
    src = tiny('imdn', seed=0)
    sd = src.state_dict()
    zero = {k: torch.zeros_like(v) for k, v in sd.items()}
    obj = {'params_ema': {'params_ema': sd, 'params': zero}, 'params': {'params': sd}, 'state_dict': {'state_dict': sd, 'epoch': 7, 'lr': 0.1},
           'model': {'model': sd, 'optimizer': {'state': {}, 'param_groups': []}}, 'module.': {f'module.{k}': v for k, v in sd.items()},
           '_orig_mod.': {f'_orig_mod.{k}': v for k, v in sd.items()},
           'model+module.': {'model': {f'module._orig_mod.{k}': v for k, v in sd.items()}},
           'extra': {'params_ema': sd, 'params': zero, 'iter': 1000}}[wrap]
    torch.save(obj, tmp_path / 'w.pth')
    assert same_state(load_weights(tiny('imdn', seed=1), tmp_path / 'w.pth'), src)


def test_unwrap_key_and_errors():
    sd = {'a': torch.zeros(1)}
    assert unwrap_state_dict({'params_ema': {'a': torch.ones(1)}, 'params': sd}, key='params') is not sd
    assert torch.equal(unwrap_state_dict({'params_ema': {'a': torch.ones(1)}, 'params': sd}, key='params')['a'], torch.zeros(1))
    assert torch.equal(unwrap_state_dict({'generator': sd}, key='generator')['a'], torch.zeros(1))
    with pytest.raises(KeyError, match="has no 'net' entry; its keys are generator"): unwrap_state_dict({'generator': sd}, key='net')
    with pytest.raises(ValueError, match='no state dict found in f.pth: its top-level keys are generator, epoch'):
        unwrap_state_dict({'generator': sd, 'epoch': 1}, 'f.pth')
    with pytest.raises(ValueError, match='it holds a list'): unwrap_state_dict([torch.zeros(1)], 'f.pth')
    with pytest.raises(ValueError, match='no state dict found'): unwrap_state_dict({}, 'f.pth')


def test_key_diff_message(tmp_path):
    save_weights(tiny('imdn'), tmp_path / 'imdn.safetensors')
    with pytest.raises(WeightsMismatchError) as e: load_weights(tiny('srvgg_compact'), tmp_path / 'imdn.safetensors')
    msg = str(e.value)
    assert 'imdn.safetensors does not match SRVGGNetCompact (scale 2)' in msg
    assert 'missing keys: body.0.weight, body.0.bias' in msg and 'unexpected keys: IMDB1.c1.bias' in msg
    assert e.value.missing[0] == 'body.0.weight' and 'fea_conv.weight' in e.value.unexpected
    with pytest.raises(WeightsMismatchError, match=r'missing keys: IMDB3\.c1\.weight'):
        load_weights(create_model('imdn', 2, nf=8, num_modules=3), tmp_path / 'imdn.safetensors')


def test_size_mismatch_names_layer_and_shapes(tmp_path):
    save_weights(tiny('imdn', 2), tmp_path / 'x2.safetensors')
    with pytest.raises(WeightsMismatchError) as e: load_weights(tiny('imdn', 4), tmp_path / 'x2.safetensors')
    msg = str(e.value)
    assert 'does not match IMDN (scale 4): wrong shapes: upsampler.0.weight (12, 8, 3, 3) (expected (48, 8, 3, 3))' in msg
    assert 'upsampler.0.bias (12,) (expected (48,))' in msg
    assert 'missing' not in msg and 'unexpected' not in msg


def test_non_strict_loads_matching_part(tmp_path):
    src = tiny('edsr_baseline', 2, seed=0)
    save_weights(src, tmp_path / 'x2.safetensors')
    m4 = tiny('edsr_baseline', 4, seed=1)
    with pytest.warns(UserWarning, match='skipped the rest') as w:
        load_weights(m4, tmp_path / 'x2.safetensors', strict=False)
    msg = str(w[0].message)
    assert 'tail.0.0.weight (32, 8, 3, 3) (expected (32, 8, 3, 3))' not in msg
    assert 'missing keys: tail.0.2.weight' in msg
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in m4.state_dict().items() if not k.startswith('tail.0.2'))
    with warnings.catch_warnings():
        warnings.simplefilter('error')                                  # an exact match does not warn
        load_weights(tiny('edsr_baseline', 2, seed=1), tmp_path / 'x2.safetensors', strict=False)
    with pytest.raises(WeightsMismatchError, match='missing keys'):   # nothing in common: still an error
        load_weights(tiny('imdn', 2), tmp_path / 'x2.safetensors', strict=False)


class _Evil:
    def __init__(self, path): self.path = str(path)
    def __reduce__(self): return (os.system, (f'touch {self.path}',))


@pytest.mark.parametrize('where', ['top', 'nested', 'raw_pickle'])
def test_malicious_pickle_refused(tmp_path, where):
    flag = tmp_path / 'pwned'
    sd = tiny('imdn').state_dict()
    path = tmp_path / 'evil.pth'
    if where == 'top': torch.save(_Evil(flag), path)
    elif where == 'nested': torch.save({'params': sd, 'meta': {'x': _Evil(flag)}}, path)
    else: path.write_bytes(pickle.dumps(_Evil(flag)))
    with pytest.raises(UnsafeWeightsError) as e: load_weights(tiny('imdn'), path)
    msg = str(e.value)
    assert 'evil.pth was refused' in msg and 'weights_only=True' in msg and 'can run arbitrary code' in msg
    assert 'posix.system' in msg or 'nt.system' in msg                   # names what it would have imported
    assert isinstance(e.value, pickle.UnpicklingError)
    assert not flag.exists()


def test_full_module_pickle_refused(tmp_path):
    torch.save(nn.Conv2d(3, 3, 1), tmp_path / 'module.pt')
    with pytest.raises(UnsafeWeightsError, match='not a plain state dict'): read_state_dict(tmp_path / 'module.pt')


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='no weights file'): read_state_dict(tmp_path / 'nothing.pth')
    (tmp_path / 'w.onnx').write_bytes(b'x')
    with pytest.raises(ValueError, match="unknown weights format '.onnx'"): read_state_dict(tmp_path / 'w.onnx')
    (tmp_path / 'w.safetensors').write_bytes(b'not safetensors at all')
    with pytest.raises(ValueError, match='not a readable safetensors file'): read_state_dict(tmp_path / 'w.safetensors')
    (tmp_path / 'w.pth').write_bytes(b'garbage bytes')
    with pytest.raises(ValueError, match='not a readable PyTorch file') as e: read_state_dict(tmp_path / 'w.pth')
    assert not isinstance(e.value, UnsafeWeightsError)
    torch.save({'a': torch.zeros(100)}, tmp_path / 'cut.pth')
    b = (tmp_path / 'cut.pth').read_bytes(); (tmp_path / 'cut.pth').write_bytes(b[:len(b) // 2])
    with pytest.raises(ValueError, match='not a readable PyTorch file'): read_state_dict(tmp_path / 'cut.pth')
    torch.save({'optimizer': {'lr': 0.1}}, tmp_path / 'opt.pth')
    with pytest.raises(ValueError, match='no state dict found'): load_weights(tiny('imdn'), tmp_path / 'opt.pth')


def test_load_spandrel_absent_is_clear(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'spandrel', None)                  # as if not installed
    with pytest.raises(ImportError, match='pip install spandrel'): load_spandrel(tmp_path / 'w.pth')


def test_spandrel_is_not_installed_here():
    "spandrel is optional and not a dependency; in this environment it is absent, so the plain call gives the clear error."
    import importlib.util
    if importlib.util.find_spec('spandrel') is not None: pytest.skip('spandrel is installed')
    with pytest.raises(ImportError, match='optional package spandrel, which is not installed: pip install spandrel'):
        load_spandrel('x.pth')


# ---------------------------------------------------------------------------------------------------- IMDN on Set5

PUBLISHED_IMDN = {2: (38.00, 0.9605), 3: (34.36, 0.9270), 4: (32.21, 0.8948)}
# measured here (RGB LR PNGs, Y channel, crop = scale): x2 37.9960/0.96049, x3 34.3597/0.92698, x4 32.2096/0.89476
MEASURED_IMDN = {2: (37.9960, 0.96049), 3: (34.3597, 0.92698), 4: (32.2096, 0.89476)}


def _imdn_data():
    root = shared_data()
    if root is None or not (root / 'weights_IMDN' / 'IMDN_x2.pth').is_file() or not (root / 'Set5' / 'LR_bicubic' / 'X4').is_dir():
        pytest.skip('IMDN weights / Set5 shared data not found')
    return root


def test_imdn_official_checkpoints_load_strictly():
    root = _imdn_data()
    for s in (2, 3, 4):
        raw = read_state_dict(root / 'weights_IMDN' / f'IMDN_x{s}.pth')
        assert all(k.startswith('module.') for k in raw)
        m = load_weights(IMDN(s), root / 'weights_IMDN' / f'IMDN_x{s}.pth')
        assert torch.equal(m.upsampler[0].bias, raw['module.upsampler.0.bias'])
        assert param_count(m) == sum(v.numel() for v in raw.values())
    with pytest.raises(WeightsMismatchError, match=r'upsampler\.0\.weight \(27, 64, 3, 3\) \(expected \(12, 64, 3, 3\)\)'):
        load_weights(IMDN(2), root / 'weights_IMDN' / 'IMDN_x3.pth')


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_imdn_set5_reproduces_published(scale):
    root = _imdn_data()
    m = load_weights(create_model('imdn', scale), root / 'weights_IMDN' / f'IMDN_x{scale}.pth').eval()
    ps, ss = [], []
    for p in sorted((root / 'Set5' / 'HR').glob('*.png')):
        lr = load_image(root / 'Set5' / 'LR_bicubic' / f'X{scale}' / f'{p.stem}x{scale}.png')
        hr = load_image(p)[:, :lr.shape[1] * scale, :lr.shape[2] * scale]             # mod-crop
        with torch.inference_mode(): sr = m(lr[None])[0].clamp(0, 1)
        assert sr.shape == hr.shape
        ps.append(psnr(sr, hr, scale).item()); ss.append(ssim(sr, hr, scale).item())
    assert len(ps) == 5
    p, s = sum(ps) / 5, sum(ss) / 5
    assert abs(p - PUBLISHED_IMDN[scale][0]) <= 0.02, p
    assert abs(s - PUBLISHED_IMDN[scale][1]) <= 0.0005, s
    assert abs(p - MEASURED_IMDN[scale][0]) <= 0.002, p                # pinned: float32 CPU, tolerance for BLAS order
    assert abs(s - MEASURED_IMDN[scale][1]) <= 0.00002, s
