"""The fastai contract of a restoration learner, tested as a fastai user calls it.

- The Recorder's columns are recomputed independently (per-batch losses, L1 terms, PSNR/SSIM of each training
  batch; the validation values from the EMA weights captured at each validation point) and must match.
- Each validation point is validated once (mid-epoch `ValidateEvery` firings and epoch ends, coinciding or not).
- `validate`, `get_preds`, `summary`, `predict`, `show_batch`, `show_results`, `export`/`load_learner`,
  `save`/`load` (EMA included), `lr_find`, `fit_one_cycle`, `fine_tune` on a fresh and on a trained learner.
"""
from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from restorekit.callbacks import CheckpointEvery, JSONLLogger, ValidateEvery
from restorekit.core import load_image
from restorekit.learner import (
    RestorationLearner,
    default_metrics,
    restoration_dls,
    restoration_learner,
)
from restorekit.losses import RestorationLoss
from restorekit.metrics import psnr, ssim
from restorekit.models import create_model, load_weights, save_weights
from conftest import patience   # hang guards (subprocess timeouts) scaled by the machine's load

with warnings.catch_warnings():
    warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
    from fastai.callback.core import Callback
    from fastai.learner import load_learner

pytestmark = pytest.mark.usefixtures('one_thread')   # conftest.py
KW = dict(n_feats=8, n_blocks=2)


# `store` (a tiny Silver store) and `valid_imgs` (two held-out photos): conftest.py


def make(store, valid_imgs, tmp_path, epoch_len=6, loss=None, seed=0, **kw):
    dls = restoration_dls(store, valid_imgs, bs=4, patch=32, scale=2, degrade='bicubic', epoch_len=epoch_len,
                          valid_crop=64, seed=seed, device='cpu')
    learn = restoration_learner(dls, 'edsr_baseline', loss=loss or RestorationLoss(l1=1, ms_ssim=0, lpips=0),
                                metrics=default_metrics(2, lpips=False), lr=1e-3, seed=seed, model_kw=KW, path=tmp_path, **kw)
    learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == 'ProgressCallback'])
    learn.logger = lambda *a, **k: None
    return learn


class SideRecord(Callback):
    "Records, independently of the recorder, every training batch's outputs and the EMA weights at each validation."
    order = 95
    def before_fit(self): self.train, self.valid_states, self.n_validations = [], [], 0
    def after_batch(self):
        if not self.training: return
        p, t = self.pred.detach().float(), self.yb[0]
        self.train.append(dict(epoch=self.epoch, loss=float(self.loss), l1=float((p - t).abs().mean()), n=len(t),
                               psnr=psnr(p.clamp(0, 1), t, 2).tolist(), ssim=ssim(p.clamp(0, 1), t, 2).tolist()))
    def before_validate(self):   # runs after the EMA swap (order 5): these are the weights validated
        self.n_validations += 1
        self.valid_states.append((self.learn.train_iter, {k: v.clone() for k, v in self.learn.model.state_dict().items()}))


def valid_scores(state, pairs, loss) -> dict:
    "valid_loss / psnr / ssim / l1 of `state` on the validation pairs, computed without the learner."
    m = create_model('edsr_baseline', 2, **KW); m.load_state_dict(state); m.eval()
    ls, ps, ss, l1 = [], [], [], []
    with torch.no_grad():
        for lq, hq in pairs:
            sr = m(lq[None])
            ls.append(float(loss(sr, hq[None]))); l1.append(float((sr - hq[None]).abs().mean()))
            ps.append(float(psnr(sr.clamp(0, 1), hq[None], 2))); ss.append(float(ssim(sr.clamp(0, 1), hq[None], 2)))
    return dict(valid_loss=np.mean(ls), psnr=np.mean(ps), ssim=np.mean(ss), l1=np.mean(l1))


def val(learn) -> list:
    return [float(v) for v in learn.validate()]


def smooth(losses, beta=0.98):
    "fastai's `AvgSmoothLoss`: the debiased exponential moving average, after each batch."
    out, v = [], 0.
    for i, l in enumerate(losses, 1):
        v = beta * v + (1 - beta) * l
        out.append(v / (1 - beta ** i))
    return out


def test_recorder_columns_are_honest(store, valid_imgs, tmp_path):
    "Every column of every epoch equals an independent computation; every validation point is validated once."
    side = SideRecord()
    ve = ValidateEvery(4, path=tmp_path)               # fires at 4, 8 (mid-epoch) and 12 (an epoch end)
    learn = make(store, valid_imgs, tmp_path, cbs=[ve, JSONLLogger(path=tmp_path), side])
    learn.fit_iters(15)                                 # epochs of 6: 6, 12, then 3 iterations cut short by StopAfter
    names = learn.recorder.metric_names[1:-1]
    assert names == ['train_loss', 'train_psnr', 'train_ssim', 'train_l1', 'valid_loss', 'valid_psnr', 'valid_ssim', 'valid_l1']
    rows = learn.recorder.values
    assert len(rows) == 3 and all(len(r) == len(names) for r in rows)   # the cut last epoch keeps its training columns
    sm = smooth([b['loss'] for b in side.train])
    pairs = learn.dls.valid.dataset.pairs
    # validations: ValidateEvery at 4 and 8, fastai's at 6, 12 (= ValidateEvery's third point, validated once) and 15
    assert [it for it, _ in side.valid_states] == [4, 6, 8, 12, 15] and side.n_validations == 5
    epoch_end_state = {it: st for it, st in side.valid_states}
    for ep, (row, end) in enumerate(zip(rows, (6, 12, 15))):
        got = dict(zip(names, row))
        b = [x for x in side.train if x['epoch'] == ep]
        n = sum(x['n'] for x in b)
        assert got['train_loss'] == pytest.approx(sm[end - 1], rel=1e-5)
        assert got['train_l1'] == pytest.approx(sum(x['l1'] * x['n'] for x in b) / n, rel=1e-5)
        assert got['train_psnr'] == pytest.approx(np.mean([v for x in b for v in x['psnr']]), rel=1e-6)
        assert got['train_ssim'] == pytest.approx(np.mean([v for x in b for v in x['ssim']]), rel=1e-6)
        want = valid_scores(epoch_end_state[end], pairs, learn.loss_func)
        for k in ('valid_loss', 'psnr', 'ssim', 'l1'):
            assert got[k if k == 'valid_loss' else f'valid_{k}'] == pytest.approx(want[k], rel=1e-5), (ep, k)
    # ValidateEvery's values: the monitored PSNR of the weights it validated (mid-epoch ones included)
    assert [it for it, _ in ve.history] == [4, 8, 12]
    for it, v in ve.history:
        assert v == pytest.approx(valid_scores(epoch_end_state[it], pairs, learn.loss_func)['psnr'], rel=1e-6)
    log = [json.loads(l) for l in (tmp_path / 'log.jsonl').read_text().splitlines()]
    assert [r['iter'] for r in log if r['type'] == 'valid'] == [4, 6, 8, 12, 15]          # once per validation point
    assert [r['iter'] for r in log if r['type'] == 'train'] == list(range(1, 16))


def test_fresh_learner_validate_get_preds_summary(store, valid_imgs, tmp_path):
    learn = make(store, valid_imgs, tmp_path)
    vals = learn.validate()
    preds, targs = learn.get_preds()
    assert preds.shape == targs.shape == (2, 3, 64, 64)
    assert vals[1] == pytest.approx(float(psnr(preds.clamp(0, 1), targs, 2).mean()), rel=1e-6)
    assert 'Input shape: 1 x 3 x 32 x 32' in learn.summary()
    learn.fit_iters(6)
    hps = list(learn.recorder.hps['lr'])
    learn.validate(); learn.get_preds(); learn.summary()
    assert learn.recorder.hps['lr'] == hps                 # validation contexts leave the run's records alone


def test_validate_outside_fit_changes_no_run_state(store, valid_imgs, tmp_path):
    ve, ck = ValidateEvery(3, path=tmp_path), CheckpointEvery(3, path=tmp_path / 'ck')
    learn = make(store, valid_imgs, tmp_path, cbs=[ve, ck, JSONLLogger(path=tmp_path)])
    learn.fit_iters(6)
    hist, log = list(ve.history), (tmp_path / 'log.jsonl').read_text()
    man = (tmp_path / 'ck' / 'last.json').read_bytes()
    learn.validate(); learn.get_preds(); learn.predict(valid_imgs[0])
    assert ve.history == hist and (tmp_path / 'log.jsonl').read_text() == log
    assert (tmp_path / 'ck' / 'last.json').read_bytes() == man


def test_predict_path_pil_array_tensor(store, valid_imgs, tmp_path):
    learn = make(store, valid_imgs, tmp_path)
    learn.fit_iters(3)
    x = load_image(valid_imgs[0])
    pil, out, raw = learn.predict(valid_imgs[0])
    assert isinstance(pil, Image.Image) and pil.size == (2 * x.shape[2], 2 * x.shape[1])
    assert out.shape == (3, 2 * x.shape[1], 2 * x.shape[2]) and 0 <= out.min() and out.max() <= 1
    with torch.no_grad():   # the EMA weights, as validation uses
        m = create_model('edsr_baseline', 2, **KW); m.load_state_dict(learn.ema_cb.shadow); m.eval()
        assert torch.allclose(raw, m(x[None])[0], atol=1e-6)
    arr = np.asarray(Image.open(valid_imgs[0]).convert('RGB'))
    for item in (Image.open(valid_imgs[0]), arr, x, x[None], torch.from_numpy(arr).permute(2, 0, 1)):
        assert torch.allclose(learn.predict(item)[1], out, atol=1e-6)
    inp, *_ = learn.predict(x, with_input=True)
    assert torch.equal(inp, x)
    with pytest.raises(ValueError, match=r'\(3,H,W\)'): learn.predict(torch.rand(4, 8, 8))
    with pytest.raises(TypeError, match='predict must be an image path'): learn.predict(42)


def test_show_batch_and_results_draw_the_pairs_without_side_effects(store, valid_imgs, tmp_path):
    def losses(show):
        learn = make(store, valid_imgs, tmp_path)
        if show:
            fig = learn.dls.show_batch(max_n=3, show=False)
            assert len(fig.axes) == 6 and [a.get_title() for a in fig.axes[:2]] == ['degraded input (LQ)', 'target (HQ)']
            assert len(learn.dls.show_batch(ds_idx=1, show=False).axes) == 4
            fig = learn.show_results(max_n=2, show=False)
            assert len(fig.axes) == 6 and fig.axes[1].get_title().startswith('output') and fig.axes[1].get_title().endswith('dB')
            assert len(learn.show_results(ds_idx=0, max_n=2, show=False).axes) == 6
        learn.fit_iters(6)
        return [float(l) for l in learn.recorder.losses]
    assert losses(True) == losses(False)      # showing batches does not move the training stream
    learn = make(store, valid_imgs, tmp_path)
    _, hq = learn.dls.gold_batch(2)
    xb, = learn.dls.train.one_batch()          # the batch training would see first (fresh sampler, same seed)
    assert torch.equal(hq, make(store, valid_imgs, tmp_path).dls.gold_cb.degrader(xb)[1][:2])


def test_save_load_carries_the_ema(store, valid_imgs, tmp_path):
    learn = make(store, valid_imgs, tmp_path)
    learn.fit_iters(6)
    f = learn.save('a')
    assert f == tmp_path / 'models' / 'a.pth'
    st = torch.load(f, weights_only=True)                       # plain tensors: safe to load
    assert set(st) == {'model', 'opt', 'ema', 'ema_n_updates'} and st['ema_n_updates'] == 6
    want = val(learn)
    learn.fit_iters(6)
    assert val(learn) != want
    learn.load('a')
    assert val(learn) == pytest.approx(want, rel=1e-6)
    other = make(store, valid_imgs, tmp_path)                   # a new learner, loading the file
    other.load('a')
    assert other.ema_cb.n_updates == 6 and val(other) == pytest.approx(want, rel=1e-6)
    torch.save(learn.model.state_dict(), tmp_path / 'models' / 'plain.pth')    # a fastai-style weights-only file
    with pytest.warns(UserWarning, match='optimizer'): other.load('plain')  # fastai warns the same way
    assert other.ema_cb.n_updates == 0                                      # restarted from those weights
    bad = create_model('edsr_baseline', 2, n_feats=8, n_blocks=1).state_dict()
    torch.save(bad, tmp_path / 'models' / 'bad.pth')
    with pytest.raises(Exception, match='body.1'): other.load('bad')        # strict: the missing keys are named


def test_ema_follows_weights_loaded_behind_its_back(store, valid_imgs, tmp_path):
    "The issue's case: a stale EMA scored instead of the loaded weights."
    a, b = make(store, valid_imgs, tmp_path, seed=0), make(store, valid_imgs, tmp_path, seed=1)
    a.fit_iters(6); b.fit_iters(12)
    save_weights(b.ema_cb.shadow, tmp_path / 'b.safetensors')
    load_weights(a.model, tmp_path / 'b.safetensors')
    assert val(a) == pytest.approx(val(b), rel=1e-6)


def test_lr_find_restores_weights_ema_and_writes_nothing(store, valid_imgs, tmp_path):
    ve, ck = ValidateEvery(2, path=tmp_path / 'v'), CheckpointEvery(2, path=tmp_path / 'ck')
    learn = make(store, valid_imgs, tmp_path, cbs=[ve, ck, JSONLLogger(path=tmp_path / 'log')])
    learn.fit_iters(6)
    files = sorted(p for p in tmp_path.rglob('*') if p.is_file())
    stamps = [p.stat().st_mtime_ns for p in files]
    want, raw = val(learn), {k: v.clone() for k, v in learn.model.state_dict().items()}
    ema = copy.deepcopy(learn.ema_cb.shadow)
    sug = learn.lr_find(num_it=10, show_plot=False)
    assert sug.valley > 0 and len(learn.recorder.lrs) >= 6
    assert all(torch.equal(raw[k], v) for k, v in learn.model.state_dict().items())
    assert all(torch.equal(ema[k], v) for k, v in learn.ema_cb.shadow.items())
    assert val(learn) == pytest.approx(want, rel=1e-7)
    after = sorted(p for p in tmp_path.rglob('*') if p.is_file() and p.suffix != '.pth')
    assert after == files and [p.stat().st_mtime_ns for p in after] == stamps   # no best/checkpoint/log written


def test_fit_one_cycle_and_fine_tune(store, valid_imgs, tmp_path):
    learn = make(store, valid_imgs, tmp_path)
    learn.fit_one_cycle(1, 1e-3)
    assert len(learn.recorder.values) == 1
    calls, one_cycle = [], learn.fit_one_cycle
    def record(n, lr_max=None, **kw):
        calls.append((n, lr_max, kw.get('div'))); return one_cycle(n, lr_max, **kw)
    learn.fit_one_cycle = record
    learn.fine_tune(1)
    # restoration-safe defaults: base_lr = learn.lr / 2 = 5e-4 for the head while frozen, then halved, body at /10
    assert calls == [(1, slice(None, 5e-4, None), None), (1, slice(2.5e-5, 2.5e-4, None), 5.0)]
    assert len(learn.recorder.values) == 1


def test_export_load_learner_predicts_the_same(store, valid_imgs, tmp_path):
    learn = make(store, valid_imgs, tmp_path)
    learn.fit_iters(6)
    learn.export(tmp_path / 'r.pkl')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        back = load_learner(tmp_path / 'r.pkl')
    assert isinstance(back, RestorationLearner) and len(back.dls.train.dataset) == 0
    assert torch.equal(back.predict(valid_imgs[0])[2], learn.predict(valid_imgs[0])[2])
    assert back.ema_cb.n_updates == 6
    learn.fit_iters(2)                                       # the exporting learner trains on with its data
    assert len(learn.recorder.losses) == 2


def test_without_accelerate_imports_and_names_the_extra():
    "A default install has no accelerate: every module imports, and distributed training says which extra to install."
    import subprocess
    import sys
    code = ("import sys; sys.modules['accelerate'] = None\n"   # as if it were not installed
            "import restorekit.learner, restorekit.callbacks, restorekit.train\n"
            "from fastai.learner import Learner\n"
            "try: Learner.distrib_ctx(None)\n"
            "except ImportError as e: print(e)\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=patience(120))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "pip install 'restorekit[distributed]'" in r.stdout
