"""`restorekit.learner`: iteration-based DataLoaders over a Silver store, and the restoration `Learner`.

A tiny Silver store is built once from the bundled photos. The sampler and crops are checked for determinism; the
DataLoaders for shapes and clear errors; the learner for its optimizer, callbacks, cosine schedule (values and the
schedule a fit really followed), EMA (differs from the raw weights, used for validation, raw weights restored),
`fine_tune` (body frozen in the first epoch), a loss that falls in a short CPU run, and bit-identical reruns.
"""
from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from restorekit.core import sample_images
from restorekit.degrade import preset
from restorekit.gold import GoldCallback
from restorekit.learner import (
    CosineWarmup,
    EMACallback,
    PatchSampler,
    SamplerDL,
    StopAfter,
    TrainPatches,
    cosine_lr,
    default_metrics,
    restoration_dls,
    restoration_learner,
)
from restorekit.losses import LossTermsCallback, RestorationLoss
from restorekit.perceptual import find_trunk_file

with warnings.catch_warnings():
    warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
    from fastai.callback.core import Callback
    from fastai.callback.training import GradientClip


pytestmark = pytest.mark.usefixtures('one_thread')   # conftest.py


# `store` (a tiny Silver store) and `valid_imgs` (two held-out photos): conftest.py


def make_dls(store, valid_imgs, seed=0, epoch_len=5, **kw):
    kw = {'bs': 4, 'patch': 32, 'scale': 2, 'degrade': 'bicubic', 'valid_crop': 64, 'device': 'cpu', **kw}
    return restoration_dls(store, valid_imgs, epoch_len=epoch_len, seed=seed, **kw)


def make_learner(store, valid_imgs, seed=0, epoch_len=5, dls_kw=None, **kw):
    dls = make_dls(store, valid_imgs, seed, epoch_len, **(dls_kw or {}))
    kw = {'loss': RestorationLoss(l1=1, ms_ssim=0, lpips=0), 'metrics': default_metrics(2, lpips=False), 'lr': 1e-3,
          'model_kw': {'n_feats': 8, 'n_blocks': 2}, **kw}
    return restoration_learner(dls, 'edsr_baseline', seed=seed, **kw)


def fit_quiet(learn, n):
    with learn.no_bar(), learn.no_logging(): learn.fit_iters(n)
    return [float(v) for v in learn.recorder.losses]


# --- sampler and crops -----------------------------------------------------------------------------------------------

def test_sampler_deterministic_per_seed_and_pass():
    a, b = PatchSampler(50, 64, seed=7), PatchSampler(50, 64, seed=7)
    first_a, first_b = list(a), list(b)
    assert first_a == first_b and len(first_a) == 64
    assert all(0 <= i < 50 for i, _ in first_a)
    assert len({i for i, _ in first_a}) < 64          # drawn with replacement
    second = list(a)
    assert second != first_a and a.epoch == 2
    assert list(PatchSampler(50, 64, seed=8)) != first_a
    c = PatchSampler(50, 64, seed=0)
    c.load_state_dict(a.state_dict())
    assert list(c) == list(a)                          # resumes the same stream
    with pytest.raises(ValueError, match='num_samples'): PatchSampler(5, 0)


def test_sampler_covers_the_store():
    idx = [i for i, _ in PatchSampler(10, 2000, seed=0)]
    counts = np.bincount(idx, minlength=10)
    assert counts.min() > 150 and counts.max() < 250


def test_train_patches_crop_and_symmetries(store):
    tp = TrainPatches(store, 32)
    x, = tp[(3, 99)]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x, tp[(3, 99)][0])
    full = torch.from_numpy(store.read(3).copy()).permute(2, 0, 1).float() / 255
    syms = [full, full.flip(2), full.flip(1), full.flip(1).flip(2)]
    syms += [s.transpose(1, 2) for s in syms]
    whole = TrainPatches(store, 48)
    for k in range(16):
        y, = whole[(3, k)]
        assert any(torch.equal(y, s) for s in syms)
    plain = TrainPatches(store, 32, augment=False)
    for k in range(8):
        y, = plain[(3, k)]
        assert any(torch.equal(y, full[:, r:r + 32, c:c + 32]) for r in range(17) for c in range(17))


def test_sampler_dl_batches(store):
    dl = SamplerDL(TrainPatches(store, 32), PatchSampler(len(store), 10, seed=0), bs=4, device='cpu')
    assert len(dl) == 2                                # drop_last
    assert [b[0].shape for b in dl] == [(4, 3, 32, 32)] * 2
    assert dl.new().sampler is dl.sampler and len(dl.new(bs=2)) == 5


# --- DataLoaders -----------------------------------------------------------------------------------------------------

def test_dls_shapes_and_gold(store, valid_imgs):
    dls = make_dls(store, valid_imgs)
    assert len(dls.train) == 5 and len(dls.valid) == 2
    xb, = dls.train.one_batch()
    assert xb.shape == (4, 3, 32, 32)
    lq, hq = dls.valid.one_batch()
    assert lq.shape == (1, 3, 32, 32) and hq.shape == (1, 3, 64, 64)
    assert isinstance(dls.gold_cb, GoldCallback) and dls.gold_cb.degrader.cfg.scale == 2
    assert dls.scale == 2 and dls.sampler.num_samples == 20


def test_dls_same_seed_same_batches(store, valid_imgs):
    a = [b[0] for b in make_dls(store, valid_imgs, seed=3).train]
    b = [b[0] for b in make_dls(store, valid_imgs, seed=3).train]
    c = [b[0] for b in make_dls(store, valid_imgs, seed=4).train]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_dls_workers_give_the_same_batches(store, valid_imgs):
    a = [b[0] for b in make_dls(store, valid_imgs, seed=5).train]
    b = [b[0] for b in make_dls(store, valid_imgs, seed=5, num_workers=2).train]
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_dls_inputs(store, valid_imgs, tmp_path):
    d = make_dls(str(store.path), valid_imgs)                      # a path to the store
    assert len(d.train.dataset) == len(store)
    folder = tmp_path / 'valid'
    folder.mkdir()
    for p in valid_imgs: (folder / p.name).write_bytes(p.read_bytes())
    (folder / 'notes.txt').write_text('not an image')
    assert len(make_dls(store, folder).valid) == 2                 # a folder
    ts = [torch.rand(3, 40, 40), torch.rand(3, 40, 40)]
    assert len(make_dls(store, ts, valid_crop=None, valid_bs=2).valid) == 1   # tensors, batched when sizes agree
    d = make_dls(store, valid_imgs, degrade=preset('light', scale=2))        # a config
    assert d.gold_cb.degrader.cfg.pipeline == 'realesrgan'


def test_dls_warns_on_training_images_in_validation(store):
    with pytest.warns(UserWarning, match='held out'): make_dls(store, sample_images()[:1])


def test_dls_cache_dir(store, valid_imgs, tmp_path):
    make_dls(store, valid_imgs, cache_dir=tmp_path)
    assert len(list(tmp_path.glob('gold-valid-*.safetensors'))) == 1


@pytest.mark.parametrize('kw, exc, msg', [
    ({'patch': 30, 'scale': 4}, ValueError, 'not a multiple of scale 4'),
    ({'patch': 64}, ValueError, "larger than the Silver store's patches"),
    ({'patch': 8, 'degrade': 'light'}, ValueError, 'smaller than the realesrgan degradation needs'),
    ({'degrade': 'nope'}, ValueError, 'unknown preset'),
    ({'bs': 0}, ValueError, 'bs and epoch_len'),
])
def test_dls_errors(store, valid_imgs, kw, exc, msg):
    with pytest.raises(exc, match=msg): make_dls(store, valid_imgs, **kw)


def test_dls_path_errors(store, valid_imgs, tmp_path):
    with pytest.raises(FileNotFoundError, match='no_store_here'): make_dls(tmp_path / 'no_store_here', valid_imgs)
    with pytest.raises(FileNotFoundError, match='not a Silver store'): make_dls(tmp_path, valid_imgs)
    with pytest.raises(ValueError, match='validation set is empty'): make_dls(store, [])
    with pytest.raises(FileNotFoundError, match='ghost.png'): make_dls(store, [valid_imgs[0], tmp_path / 'ghost.png'])
    with pytest.raises(FileNotFoundError, match='no_folder'): make_dls(store, tmp_path / 'no_folder')
    with pytest.raises(ValueError, match='scale 4'): make_dls(store, valid_imgs, degrade=preset('bicubic', scale=4))
    ts = [torch.rand(3, 40, 40), torch.rand(3, 48, 48)]
    with pytest.raises(ValueError, match='valid_bs=1'): make_dls(store, ts, valid_crop=None, valid_bs=2)


# --- schedule --------------------------------------------------------------------------------------------------------

def test_cosine_lr_values():
    assert cosine_lr(0, 100, 1e-3) == pytest.approx(1e-3)
    assert cosine_lr(99, 100, 1e-3) == pytest.approx(1e-7)
    assert cosine_lr(49.5, 100, 1e-3) == pytest.approx((1e-3 + 1e-7) / 2)
    assert cosine_lr(0, 100, 1e-3, warmup=0.1) == pytest.approx(1e-4)
    assert cosine_lr(4, 100, 1e-3, warmup=0.1) == pytest.approx(5e-4)
    assert cosine_lr(10, 100, 1e-3, warmup=0.1) == pytest.approx(1e-3)
    assert cosine_lr(99, 100, 1e-3, warmup=0.1) == pytest.approx(1e-7)
    mid = 10 + (99 - 10) / 2
    assert cosine_lr(mid, 100, 1e-3, warmup=0.1) == pytest.approx((1e-3 + 1e-7) / 2)
    lrs = [cosine_lr(i, 50, 1e-3, 0.2) for i in range(50)]
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))     # rising warm-up, reaching lr at its last step
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))     # then falling
    assert cosine_lr(0, 1, 1e-3) == pytest.approx(1e-3)
    assert cosine_lr(0, 10, 1e-8) == pytest.approx(1e-8)           # eta_min above lr: stays at lr
    for w in (-0.1, 1.0):
        with pytest.raises(ValueError, match='warmup'): cosine_lr(0, 10, 1e-3, w)


def test_fit_iters_follows_schedule(store, valid_imgs):
    learn = make_learner(store, valid_imgs, epoch_len=5, warmup=0.25)
    losses = fit_quiet(learn, 12)                                   # 3 epochs, the last cut to 2 iterations
    assert len(losses) == 12
    assert len(learn.recorder.values) == 3                          # validated after each epoch
    lrs = learn.recorder.hps['lr']
    assert lrs == pytest.approx([cosine_lr(i, 12, 1e-3, 0.25) for i in range(12)])
    assert lrs[0] == pytest.approx(1e-3 / 3) and lrs[-1] == pytest.approx(1e-7)
    sched = next(cb for cb in learn.cbs if isinstance(cb, CosineWarmup))
    assert sched.total is None and sched.warmup == 0.25            # restored after fit_iters
    assert not any(isinstance(cb, StopAfter) for cb in learn.cbs)


def test_fit_epochs_spans_schedule(store, valid_imgs):
    learn = make_learner(store, valid_imgs, epoch_len=4)
    with learn.no_bar(), learn.no_logging(): learn.fit(2)
    lrs = learn.recorder.hps['lr']
    assert len(lrs) == 8 and lrs == pytest.approx([cosine_lr(i, 8, 1e-3) for i in range(8)])


def test_default_iters(store, valid_imgs):
    learn = make_learner(store, valid_imgs, epoch_len=4, n_iter=6)
    assert len(fit_quiet(learn, None)) == 6
    with pytest.raises(ValueError, match='n_iter'): learn.fit_iters(-1)


def test_one_cycle_keeps_its_schedule(store, valid_imgs):
    learn = make_learner(store, valid_imgs, epoch_len=10)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 1e-3)
    lrs = learn.recorder.hps['lr']
    assert max(lrs) == pytest.approx(1e-3, rel=0.05) and lrs[0] < 1e-4 and np.argmax(lrs) not in (0, 9)


# --- learner ---------------------------------------------------------------------------------------------------------

def test_learner_parts(store, valid_imgs):
    learn = make_learner(store, valid_imgs)
    kinds = {type(cb) for cb in learn.cbs}
    assert {GoldCallback, CosineWarmup, GradientClip, EMACallback, LossTermsCallback} <= kinds
    assert next(cb for cb in learn.cbs if isinstance(cb, GradientClip)).max_norm == 1.0
    learn.create_opt()
    assert learn.opt_func.keywords['decouple_wd'] is True
    assert len(learn.opt.param_lists) == 2                         # model_splitter: body, head
    fit_quiet(learn, 2)
    assert learn.opt.hypers[0]['wd'] == 1e-4
    assert 'train_l1' in learn.recorder.metric_names and 'valid_psnr' in learn.recorder.metric_names

    own = GoldCallback(preset('bicubic', scale=2), seed=1)
    mine = make_learner(store, valid_imgs, cbs=[own])                # a GoldCallback of one's own replaces dls.gold_cb
    assert [cb for cb in mine.cbs if isinstance(cb, GoldCallback)] == [own]

    bare = make_learner(store, valid_imgs, grad_clip=None, ema=None, loss=F.l1_loss)
    kinds = {type(cb) for cb in bare.cbs}
    assert GradientClip not in kinds and EMACallback not in kinds and LossTermsCallback not in kinds


def test_gold_degradation_in_fit(store, valid_imgs):
    seen = {}

    class Peek(Callback):
        order = 0
        def before_batch(self):
            if self.training: seen['x'], seen['y'] = self.xb[0].shape, self.yb[0].shape

    learn = make_learner(store, valid_imgs, cbs=[Peek()])
    fit_quiet(learn, 1)
    assert seen == {'x': (4, 3, 16, 16), 'y': (4, 3, 32, 32)}


def test_learner_errors(store, valid_imgs):
    with pytest.raises(TypeError, match='gold_cb'): restoration_learner(object())
    with pytest.raises(ValueError, match='mixed_precision'): make_learner(store, valid_imgs, mixed_precision='fp8')
    with pytest.raises(ValueError, match='warmup'): make_learner(store, valid_imgs, warmup=1.0)
    with pytest.raises(ValueError, match='unknown architecture'):
        restoration_learner(make_dls(store, valid_imgs), 'nope', loss=F.l1_loss, metrics=[])


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU fallback')
def test_mixed_precision_ignored_on_cpu(store, valid_imgs):
    with pytest.warns(UserWarning, match='needs CUDA'): learn = make_learner(store, valid_imgs, mixed_precision='bf16')
    assert not any(type(cb).__name__ == 'MixedPrecision' for cb in learn.cbs)


def test_default_loss_runs_offline(store, valid_imgs, offline_empty_cache):
    "With no trunk weights on disk and no network, the default learner builds and trains (L1 + MS-SSIM, no LPIPS)."
    assert find_trunk_file('alexnet') is None
    learn = restoration_learner(make_dls(store, valid_imgs), model_kw={'n_feats': 8, 'n_blocks': 1})
    assert learn.loss_func.term_names == ['l1', 'ms_ssim']
    assert [m.name for m in learn.metrics] == ['psnr', 'ssim']
    with learn.no_bar(), learn.no_logging(): learn.fit_iters(2)
    assert len(learn.recorder.losses) == 2


def test_default_metrics():
    assert [m.name for m in default_metrics(2, lpips=False)] == ['psnr', 'ssim']
    assert [m.name for m in default_metrics(4, lpips=True)] == ['psnr', 'ssim', 'lpips']


def test_training_lowers_the_loss(store, valid_imgs):
    learn = make_learner(store, valid_imgs, epoch_len=20)
    losses = fit_quiet(learn, 40)
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5]), (losses[:5], losses[-10:])
    assert all(math.isfinite(v) for v in losses)
    psnr = learn.recorder.values[-1][learn.recorder.metric_names.index('valid_psnr') - 1]
    assert psnr > 20


def test_same_seed_same_losses(store, valid_imgs):
    r0 = fit_quiet(make_learner(store, valid_imgs, seed=0), 8)
    assert r0 == fit_quiet(make_learner(store, valid_imgs, seed=0), 8)
    assert r0 != fit_quiet(make_learner(store, valid_imgs, seed=1), 8)


# --- EMA -------------------------------------------------------------------------------------------------------------

def test_ema_differs_and_is_used_for_validation(store, valid_imgs):
    learn = make_learner(store, valid_imgs)
    fit_quiet(learn, 5)
    ema = learn.ema
    assert isinstance(ema, EMACallback) and ema.n_updates == 5
    name, p = next(iter(learn.model.named_parameters()))
    assert not torch.equal(ema.shadow[name], p.detach())
    seen = {}

    class Peek(Callback):
        order = 50
        def before_batch(self):
            if not self.training: seen['w'] = next(self.learn.model.parameters()).detach().clone()

    raw = p.detach().clone()
    with learn.no_bar(), learn.no_logging(): v_ema = learn.validate(cbs=[Peek()])[0]
    assert torch.equal(seen['w'], ema.shadow[name])
    assert torch.equal(next(learn.model.parameters()).detach(), raw)
    ema.swap = False
    with learn.no_bar(), learn.no_logging(): v_raw = learn.validate()[0]
    assert v_ema != v_raw


def test_ema_update_rule():
    model = torch.nn.Linear(2, 2)
    cb = EMACallback(0.9, warmup=False)
    cb.learn = type('L', (), {'model': model})()
    cb.before_fit()
    w0 = model.weight.detach().clone()
    with torch.no_grad(): model.weight.add_(1.0)
    cb.after_step()
    assert torch.allclose(cb.shadow['weight'], 0.9 * w0 + 0.1 * (w0 + 1))
    cb2 = EMACallback(0.999)
    cb2.learn = cb.learn
    cb2.before_fit()
    with torch.no_grad(): model.weight.add_(1.0)
    cb2.after_step()                                                # first update: decay (1+0)/(10+0) = 0.1
    assert torch.allclose(cb2.shadow['weight'], 0.1 * (w0 + 1) + 0.9 * (w0 + 2))
    assert set(cb2.ema_state_dict()) == {'weight', 'bias'}
    with pytest.raises(RuntimeError, match='train first'): EMACallback().ema_state_dict()
    with pytest.raises(ValueError, match='decay'): EMACallback(1.0)


# --- fine-tuning -----------------------------------------------------------------------------------------------------

def test_fine_tune_freezes_body_first(store, valid_imgs):
    learn = make_learner(store, valid_imgs, epoch_len=3)
    body0 = [p.detach().clone() for p in learn.splitter(learn.model)[0]]
    head0 = [p.detach().clone() for p in learn.splitter(learn.model)[1]]
    state = {}

    class Check(Callback):
        def after_epoch(self):
            if 'body' in state: return
            body, head = self.learn.splitter(self.learn.model)
            state['body'] = all(torch.equal(a, b) for a, b in zip(body0, body))
            state['head'] = all(torch.equal(a, b) for a, b in zip(head0, head))

    with learn.no_bar(), learn.no_logging(): learn.fine_tune(1, 1e-3, cbs=[Check()])
    assert state == {'body': True, 'head': False}
    assert not all(torch.equal(a, b) for a, b in zip(body0, learn.splitter(learn.model)[0]))
    assert len(learn.recorder.losses) == 3                          # the unfrozen epoch
