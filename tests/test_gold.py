"""`restorekit.gold`: the Gold stage in the training loop — plans drawn in the DataLoader (keyed by the batch's crop
seeds), `gold_on='device'` vs `'workers'`, 0 vs 2 worker processes, and the CUDA paths (skipped without a GPU).

Equivalences tested here, on the CPU:
- a keyed plan is exactly the sequential draw of a degrader seeded with `key_seed(seed, key)`;
- `apply(hr, plan(B, H, W))` is `Degrader.__call__` for every preset;
- `gold_on='workers'` gives bit-identical batches to `gold_on='device'` (same plan, same CPU noise generator);
- 0 and 2 worker processes give bit-identical batches in both modes.
"""
from __future__ import annotations

import math
import pickle
import warnings

import pytest
import torch

from restorekit.degrade import Degrader, PRESETS, jpeg, key_seed, preset
from restorekit.gold import GoldCallback, GoldPlan, LoaderGold, loader_plan
from restorekit.learner import restoration_dls, restoration_learner, default_metrics
from restorekit.losses import RestorationLoss

with warnings.catch_warnings():
    warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
    from fastai.callback.core import Callback

pytestmark = pytest.mark.usefixtures('one_thread')   # conftest.py

# Real-ESRGAN's two stages, with a first-stage downscale no stronger than 0.5 so 32 px patches fit its blurs
RESRGAN_32 = dict(degrade=preset('realesrgan', scale=2, stage1={'resize_range': (0.5, 1.5)}))
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device: the GPU paths are untested here')


def make_dls(store, valid_imgs, **kw):
    kw = {'bs': 4, 'patch': 32, 'scale': 2, 'valid_crop': 64, 'device': 'cpu', 'epoch_len': 3, 'seed': 1, **RESRGAN_32, **kw}
    dls = restoration_dls(store, valid_imgs, **kw)
    dls.train.fake_l.timeout = 120 if kw.get('num_workers') else 0   # a stuck worker fails the test instead of hanging it
    return dls


def gold_pairs(dls) -> list:
    "The `(lq, hq)` pairs of one pass over the training loader, degraded as `GoldCallback` would."
    out = []
    for b in dls.train:
        plan = loader_plan(dls.train)
        out.append(b if plan.applied else dls.gold_cb.degrader.apply(b[0], plan.samples))
    return out


def same(a, b): return len(a) == len(b) and all(torch.equal(x, y) for p, q in zip(a, b) for x, y in zip(p, q))


def _rand_hr(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(x, size=(size, size), mode='bicubic', align_corners=False).clamp(0, 1)


# --- plans -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', list(PRESETS))
def test_keyed_plan_is_the_sequential_draw_of_the_mixed_seed(name):
    "Same seed → same plan: a keyed plan equals what today's sequential planner draws from `key_seed(seed, key)`."
    cfg = preset(name, scale=1 if name == 'jpeg_heavy' else 2)
    keyed = Degrader(cfg, seed=7).plan(4, 96, 96, key=[11, 12, 13, 14])
    seq = Degrader(cfg, seed=key_seed(7, [11, 12, 13, 14])).plan(4, 96, 96)
    assert [{k: v for k, v in p.items() if not isinstance(v, (torch.Tensor, tuple))} for p in keyed] == \
           [{k: v for k, v in p.items() if not isinstance(v, (torch.Tensor, tuple))} for p in seq]
    for p, q in zip(keyed, seq):
        for k in p:
            if isinstance(p[k], torch.Tensor): assert torch.equal(p[k], q[k]), k


@pytest.mark.parametrize('name', list(PRESETS))
def test_apply_of_a_plan_is_the_call(name):
    cfg = preset(name, scale=1 if name == 'jpeg_heavy' else 2)
    hr = _rand_hr(3, 96, seed=2)
    a, b = Degrader(cfg, seed=3), Degrader(cfg, seed=3)
    lq, hq, rec = a(hr, record=True)
    lq2, hq2, rec2 = b.apply(hr, b.plan(3, 96, 96), record=True)
    assert torch.equal(lq, lq2) and torch.equal(hq, hq2) and rec == rec2


def test_keys_seeds_and_pickling():
    assert key_seed(0, [1, 2]) == key_seed(0, [1, 2]) != key_seed(0, [2, 1]) != key_seed(1, [2, 1])
    assert 0 <= key_seed(2**62, [2**62]) < 2**63
    deg = Degrader(preset('bsrgan', scale=2), seed=0)           # correlated noise: covariance tuples; per-sample op orders
    hr = _rand_hr(4, 64)
    plan = GoldPlan(deg.plan(4, 64, 64, key=[5, 6, 7, 8]))
    back = pickle.loads(pickle.dumps(plan))
    assert all(isinstance(v, torch.Tensor) for p in back.samples for k, v in p.items() if k.startswith('_k.'))
    assert torch.equal(deg.apply(hr, back.samples)[0], deg.apply(hr, plan.samples)[0])


# --- the loader ------------------------------------------------------------------------------------------------------

def test_workers_mode_equals_device_mode_on_cpu(store, valid_imgs):
    dev, wk = gold_pairs(make_dls(store, valid_imgs)), gold_pairs(make_dls(store, valid_imgs, gold_on='workers'))
    assert len(dev) == 3 and dev[0][0].shape == (4, 3, 16, 16) and dev[0][1].shape == (4, 3, 32, 32)
    assert same(dev, wk)
    other = gold_pairs(make_dls(store, valid_imgs, seed=2))
    assert not torch.equal(other[0][0], dev[0][0])


@pytest.mark.parametrize('gold_on', ['device', 'workers'])
def test_zero_and_two_workers_give_the_same_batches(store, valid_imgs, gold_on):
    jpeg(_rand_hr(1, 32), torch.tensor([50.]))   # the parent's codec thread pool exists before the workers fork
    a = gold_pairs(make_dls(store, valid_imgs, gold_on=gold_on))
    b = gold_pairs(make_dls(store, valid_imgs, gold_on=gold_on, num_workers=2))
    assert same(a, b)
    dls = make_dls(store, valid_imgs, gold_on=gold_on, num_workers=2)
    assert same(gold_pairs(dls), b) and not same(gold_pairs(dls), b)   # a second pass is a new draw, reproducibly


class _Spy(Callback):
    "Record the training input and target after the Gold stage."
    order = 0
    def __init__(self): self.seen = []
    def before_batch(self):
        if self.learn.training: self.seen.append((self.learn.xb[0].clone(), self.learn.yb[0].clone()))


def _fit_and_spy(store, valid_imgs, n=3, **kw):
    dls = make_dls(store, valid_imgs, **kw)
    spy = _Spy()
    learn = restoration_learner(dls, 'edsr_baseline', loss=RestorationLoss(l1=1, ms_ssim=0, lpips=0), metrics=default_metrics(2, lpips=False),
                                lr=1e-3, seed=0, model_kw={'n_feats': 8, 'n_blocks': 1}, cbs=[spy])
    with learn.no_bar(), learn.no_logging(): learn.fit_iters(n)
    return spy.seen, learn


def test_learner_trains_on_the_same_pairs_in_both_modes(store, valid_imgs):
    "Through `GoldCallback`: the model sees the loader's pairs, the same in both modes, with 0 or 2 workers."
    ref = gold_pairs(make_dls(store, valid_imgs))
    a, la = _fit_and_spy(store, valid_imgs)
    b, lb = _fit_and_spy(store, valid_imgs, gold_on='workers', num_workers=2)
    assert same(a, ref) and same(b, ref)
    assert [float(v) for v in la.recorder.losses] == [float(v) for v in lb.recorder.losses]


@pytest.mark.parametrize('gold_on', ['device', 'workers'])
def test_gold_batch_is_the_next_training_batch(store, valid_imgs, gold_on):
    dls = make_dls(store, valid_imgs, gold_on=gold_on)
    lq, hq = dls.gold_batch(2)
    first = gold_pairs(dls)[0]
    assert torch.equal(lq, first[0][:2]) and torch.equal(hq, first[1][:2])


def test_bad_gold_options_are_refused(store, valid_imgs):
    with pytest.raises(ValueError, match='gold_on must be one of'): make_dls(store, valid_imgs, gold_on='gpu')
    with pytest.raises(ValueError, match="use gold_on='device'"):
        make_dls(store, valid_imgs, gold_on='workers', paired=store)
    with pytest.raises(ValueError, match='jpeg_codec must be one of'): make_dls(store, valid_imgs, jpeg_codec='nvjpeg')


def test_a_plan_for_another_batch_is_refused():
    deg = Degrader('light', seed=0)
    with pytest.raises(ValueError, match=r'draw it with plan\(B, H, W\)'):
        deg.apply(_rand_hr(2, 64), deg.plan(3, 64, 64))


def test_range_checked_on_the_first_batch_of_each_fit_only():
    "The range check syncs the device; it runs once per fit (a 0-255 batch is caught there)."
    calls = []
    class _Count(Degrader):
        def check(self, hr, check_range=True): calls.append(check_range); return super().check(hr, check_range)
    cb = GoldCallback(_Count(preset('light', scale=2), seed=0))
    class _L: pass
    learn = _L(); learn.training = True; learn.dl = None
    cb.learn = learn
    for _ in range(3):
        learn.xb, learn.yb = (_rand_hr(2, 32),), ()
        cb.before_batch()
    assert calls == [True, False, False]
    cb.before_fit(); learn.xb = (_rand_hr(2, 32) * 255,)
    with pytest.raises(ValueError, match='divide by 255'): cb.before_batch()


# --- CUDA ------------------------------------------------------------------------------------------------------------

def _psnr(a, b): return 10 * math.log10(1 / max(torch.mean((a.float() - b.float()) ** 2).item(), 1e-12))


@cuda
@pytest.mark.parametrize('q', list(range(30, 96, 5)))
def test_device_jpeg_is_within_40db_of_libjpeg(q):
    "nvJPEG against the host libjpeg at the same quality: PSNR >= 40 dB (the tolerance the issue sets)."
    hr = _rand_hr(8, 128, seed=q)
    qs = torch.full((8,), float(q))
    host = jpeg(hr, qs)
    dev = jpeg(hr.cuda(), qs, codec='device').cpu()
    assert _psnr(dev, host) >= 40, f'q={q}: {_psnr(dev, host):.2f} dB'


@cuda
def test_device_jpeg_handles_mixed_sizes_and_qualities():
    from restorekit.degrade import jpeg_list
    xs = [_rand_hr(1, s, seed=s).cuda() for s in (32, 48, 64, 48)]
    outs = jpeg_list(xs, torch.tensor([30., 95., 30., 60.]), codec='device')
    assert [tuple(o.shape) for o in outs] == [tuple(x.shape) for x in xs] and all(o.device.type == 'cuda' for o in outs)


@cuda
def test_gold_on_cuda_follows_the_loader_plan(store, valid_imgs):
    "On CUDA: the same plan as on the CPU; the pixels stay on the device; training runs with the device codec."
    dls = make_dls(store, valid_imgs, device='cuda', jpeg_codec='device')
    b = dls.train.one_batch()
    plan = loader_plan(dls.train)
    lq, hq = dls.gold_cb.degrader.apply(b[0], plan.samples)
    assert lq.device.type == 'cuda'
    ref = make_dls(store, valid_imgs)
    ref.train.one_batch()
    rp = loader_plan(ref.train)
    assert [{k: v for k, v in p.items() if not k.startswith('_')} for p in plan.samples] == \
           [{k: v for k, v in p.items() if not k.startswith('_')} for p in rp.samples]
    seen, learn = _fit_and_spy(store, valid_imgs, device='cuda', jpeg_codec='device')
    assert len(seen) == 3 and all(math.isfinite(float(v)) for v in learn.recorder.losses)
