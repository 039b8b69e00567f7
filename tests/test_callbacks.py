"""`restorekit.callbacks`: validation every N iterations with best-weights saving, the non-finite-loss guard, the JSON-lines log.

A tiny Silver store and a tiny EDSR (bicubic x2, L1 loss) are trained for a few iterations on the CPU. Checked:
validation happens at the right iterations (mid-epoch too) and leaves the training state as it was; only
improvements are saved, and the file loads back strictly (EMA weights); NaN losses are skipped with the weights
untouched and too many in a row stop the run with a clear error; the log has one line per iteration and per validation.
"""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from restorekit.callbacks import (
    JSONLLogger,
    NaNGuard,
    NonFiniteLossError,
    ValidateEvery,
    plot_loss_curve,
)
from restorekit.core import sample_images
from restorekit.learner import default_metrics, restoration_dls, restoration_learner
from restorekit.losses import RestorationLoss
from restorekit.models import create_model, load_weights
from restorekit.silver import SilverStore, build_silver

with warnings.catch_warnings():
    warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
    from fastai.callback.core import Callback


pytestmark = pytest.mark.usefixtures('one_thread')   # conftest.py


@pytest.fixture(scope='module')
def dls(tmp_path_factory):
    dest = tmp_path_factory.mktemp('silver')
    build_silver(sample_images()[:8], dest, patch=48, max_per_image=6, verbose=False)
    return restoration_dls(SilverStore(dest), sample_images()[8:10], bs=4, patch=32, scale=2, degrade='bicubic',
                           epoch_len=5, valid_crop=64, device='cpu')


def make_learner(dls, loss=None, cbs=(), **kw):
    loss = loss if loss is not None else RestorationLoss(l1=1, ms_ssim=0, lpips=0)
    return restoration_learner(dls, 'edsr_baseline', loss=loss, metrics=default_metrics(2, lpips=False), lr=1e-3,
                               model_kw={'n_feats': 8, 'n_blocks': 2}, cbs=list(cbs), **kw)


def fit(learn, n):
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn.fit_iters(n)


def tiny_model():
    return create_model('edsr_baseline', 2, n_feats=8, n_blocks=2)


class Scripted(ValidateEvery):
    "Scripted validation values instead of the real ones."
    def __init__(self, values, **kw):
        super().__init__(**kw)
        self.values = list(values)

    def record(self, it, vals):
        return self.update(it, self.values.pop(0))


class Probe(Callback):
    "Training state after every training batch, after `ValidateEvery` had its turn."
    order = 90

    def before_fit(self):
        self.states = []

    def after_batch(self):
        if self.training:
            self.states.append((self.learn.train_iter, self.learn.training, self.model.training, self.dl is self.dls.train))


class Snap(Callback):
    "The weights before each training batch."
    order = -30

    def before_fit(self):
        self.snaps = []

    def before_batch(self):
        if self.training:
            self.snaps.append({k: v.clone() for k, v in self.learn.model.state_dict().items()})


class NaNAt(torch.nn.Module):
    "L1 loss that is NaN on the training calls numbered in `bad` (0-based)."
    def __init__(self, bad):
        super().__init__()
        self.bad, self.n = set(bad), 0

    def forward(self, p, t):
        loss = F.l1_loss(p, t)
        if torch.is_grad_enabled():
            bad = self.n in self.bad
            self.n += 1
            if bad:
                return loss * float('nan')
        return loss


# ValidateEvery

def test_validate_every_iterations_and_state(dls, tmp_path):
    learn = make_learner(dls, cbs=[ValidateEvery(n_iter=5, path=tmp_path), Probe()])
    fit(learn, 17)
    ve = learn.validate_every
    assert [i for i, _ in ve.history] == [5, 10, 15]
    assert all(math.isfinite(v) and v > 10 for _, v in ve.history)      # PSNR in dB
    assert ve.saved[0] == 5 and ve.best == max(v for _, v in ve.history)
    assert [s[0] for s in learn.probe.states] == list(range(1, 18))
    assert all(all(s[1:]) for s in learn.probe.states)
    assert len(learn.recorder.losses) == 17 and len(learn.recorder.values) == 4
    assert ve.fpath == tmp_path / 'best.safetensors' and ve.fpath.exists()
    load_weights(tiny_model(), ve.fpath, strict=True)
    with safe_open(ve.fpath, 'pt') as f:
        meta = f.metadata()
    assert meta['metric'] == 'psnr' and int(meta['iter']) == ve.best_iter
    assert float(meta['value']) == pytest.approx(ve.best)
    assert not list(tmp_path.glob('.*.tmp'))                            # no temp file left by the atomic write


def test_validate_every_mid_epoch(dls, tmp_path):
    learn = make_learner(dls, cbs=[ValidateEvery(n_iter=3, path=tmp_path)])
    fit(learn, 10)
    assert [i for i, _ in learn.validate_every.history] == [3, 6, 9]


@pytest.mark.parametrize('values,monitor,saved', [
    ([30., 31., 30.5, 32., 32.], 'psnr', [2, 4, 8]),
    ([0.5, 0.6, 0.4, 0.4, 0.1], 'loss', [2, 6, 10]),
    ([0.3, 0.2, 0.25], 'lpips', [2, 4]),
])
def test_saves_only_on_improvement(dls, tmp_path, values, monitor, saved):
    learn = make_learner(dls, cbs=[Scripted(values, n_iter=2, monitor=monitor, path=tmp_path)])
    fit(learn, 2 * len(values))
    assert learn.scripted.saved == saved
    assert [v for _, v in learn.scripted.history] == values


def test_saves_ema_weights(dls, tmp_path):
    learn = make_learner(dls, cbs=[Scripted([30., 31.], n_iter=5, path=tmp_path)])
    fit(learn, 10)
    saved = load_weights(tiny_model(), learn.scripted.fpath).state_dict()
    ema, raw = learn.ema.ema_state_dict(), learn.model.state_dict()
    assert all(torch.equal(saved[k], ema[k]) for k in saved)
    assert not all(torch.equal(saved[k], raw[k]) for k in saved)


def test_saves_raw_weights_without_ema(dls, tmp_path):
    learn = make_learner(dls, cbs=[Scripted([30., 31.], n_iter=5, path=tmp_path, with_ema=False)])
    fit(learn, 10)
    saved = load_weights(tiny_model(), learn.scripted.fpath).state_dict()
    raw = learn.model.state_dict()
    assert all(torch.equal(saved[k], raw[k]) for k in saved)


def test_validate_every_errors():
    with pytest.raises(ValueError, match='comp=operator.gt'):
        ValidateEvery(monitor='foo')
    with pytest.raises(ValueError, match='n_iter'):
        ValidateEvery(n_iter=0)


# NaNGuard

def test_nan_guard_skips_bad_batches(dls):
    learn = make_learner(dls, loss=NaNAt({3, 7}), cbs=[NaNGuard(3), Snap()])
    with pytest.warns(UserWarning, match='iteration 3'), learn.no_bar(), learn.no_logging():
        learn.fit_iters(10)
    g = learn.nan_guard
    assert (g.n_skipped, g.skipped_iters, g.consecutive) == (2, [3, 7], 0)
    snaps = learn.snap.snaps + [learn.model.state_dict()]
    for i in range(10):
        same = all(torch.equal(snaps[i][k], snaps[i + 1][k]) for k in snaps[i])
        assert same == (i in (3, 7)), i
    assert all(torch.isfinite(v).all() for v in learn.model.state_dict().values())
    assert all(torch.isfinite(v).all() for v in learn.ema.shadow.values())
    assert len(learn.recorder.losses) == 8 and all(math.isfinite(v) for v in learn.recorder.losses)


def test_nan_guard_stops_after_consecutive(dls):
    learn = make_learner(dls, loss=NaNAt({4, 5, 6, 7}), cbs=[NaNGuard(3), Snap()])
    with pytest.raises(NonFiniteLossError, match='iteration 6') as e:
        fit(learn, 10)
    assert 'lower learning rate' in str(e.value)
    sd = learn.model.state_dict()
    assert all(torch.equal(sd[k], learn.snap.snaps[4][k]) for k in sd)
    assert all(torch.isfinite(v).all() for v in sd.values())


def test_nan_guard_errors():
    with pytest.raises(ValueError, match='max_consecutive'):
        NaNGuard(0)


# JSONLLogger

def test_jsonl_logger_and_plot(dls, tmp_path):
    learn = make_learner(dls, cbs=[JSONLLogger(path=tmp_path), ValidateEvery(n_iter=4, path=tmp_path)])
    fit(learn, 10)
    recs = [json.loads(line) for line in (tmp_path / 'log.jsonl').read_text().splitlines()]
    train = [r for r in recs if r['type'] == 'train']
    valid = [r for r in recs if r['type'] == 'valid']
    assert [r['iter'] for r in train] == list(range(1, 11))
    assert [r['iter'] for r in valid] == [4, 5, 8, 10]
    for r in train:
        assert {'loss', 'lr', 'l1', 'epoch', 'time'} <= set(r)
        assert r['loss'] == pytest.approx(r['l1'], rel=1e-5)
        assert r['lr'] > 0
    assert train[0]['lr'] == pytest.approx(1e-3)
    assert all({'psnr', 'ssim', 'valid_loss'} <= set(r) for r in valid)
    assert [v['psnr'] for v in valid if v['iter'] in (4, 8)] == pytest.approx([v for _, v in learn.validate_every.history])
    fit(learn, 2)                                                       # appends
    assert len((tmp_path / 'log.jsonl').read_text().splitlines()) == len(recs) + 3
    png = plot_loss_curve(tmp_path / 'log.jsonl', tmp_path / 'curve.png')
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_jsonl_logger_nan_is_null(dls, tmp_path):
    learn = make_learner(dls, loss=NaNAt({1}), cbs=[NaNGuard(3), JSONLLogger(path=tmp_path)])
    fit(learn, 3)
    recs = [json.loads(line) for line in (tmp_path / 'log.jsonl').read_text().splitlines()]
    assert [r['loss'] is None for r in recs if r['type'] == 'train'] == [False, True, False]


def test_plot_needs_losses(tmp_path):
    (tmp_path / 'empty.jsonl').write_text('')
    with pytest.raises(ValueError, match='no training losses'):
        plot_loss_curve(tmp_path / 'empty.jsonl', tmp_path / 'x.png')
