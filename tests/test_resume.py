"""`restorekit.callbacks`: full-state checkpoints (`CheckpointEvery`) and `resume`.

Tiny CPU setup as in test_learner.py (bicubic x2, L1-only `RestorationLoss`, tiny EDSR, seeded). Run A trains 30
iterations without a break; run B trains the same 30-iteration run, checkpointing every 6 iterations, and dies at
iteration 12; a new learner built from scratch resumes from the checkpoint. The final weights must be bit-identical
(`torch.equal`, on the CPU, one thread as in the other tests; no `use_deterministic_algorithms` needed). Also: damaged
checkpoints are refused naming the file, and a child process killed with SIGKILL after its first checkpoint resumes to
the same weights.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import torch

from restorekit.callbacks import (
    CheckpointError,
    CheckpointEvery,
    NaNGuard,
    ValidateEvery,
    fit_resumable,
    read_checkpoint,
    resume,
)
from restorekit.core import sample_images
from restorekit.learner import default_metrics, restoration_dls, restoration_learner
from restorekit.losses import RestorationLoss
from restorekit.silver import SilverStore, build_silver
from conftest import patience   # hang guards scaled by the machine's load

with warnings.catch_warnings():
    warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
    from fastai.callback.core import Callback


pytestmark = pytest.mark.usefixtures('one_thread')   # conftest.py


@pytest.fixture(scope='module')
def store_path(tmp_path_factory):
    dest = tmp_path_factory.mktemp('silver')
    build_silver(sample_images()[:8], dest, patch=48, max_per_image=6, verbose=False)
    return dest


def make_learner(store_path, cbs=()):
    "A learner with its own DataLoaders (the sampler and degrader live there)."
    dls = restoration_dls(SilverStore(store_path), sample_images()[8:10], bs=4, patch=32, scale=2, degrade='bicubic',
                          epoch_len=5, valid_crop=64, device='cpu', seed=0)
    return restoration_learner(dls, 'edsr_baseline', loss=RestorationLoss(l1=1, ms_ssim=0, lpips=0),
                               metrics=default_metrics(2, lpips=False), lr=1e-3, model_kw={'n_feats': 8, 'n_blocks': 2},
                               seed=0, cbs=list(cbs))


class Crash(Callback):
    "Die (without fastai's after_fit) before training iteration `n`+1."
    order = -40
    def __init__(self, n): self.n = n
    def before_batch(self):
        if self.training and self.train_iter >= self.n: raise KeyboardInterrupt()


class LRLog(Callback):
    order, name = 95, 'lr_log'
    def before_fit(self): self.log = []
    def after_batch(self):
        if self.training: self.log.append((self.learn.train_iter, self.opt.hypers[-1]['lr'], float(self.learn.loss)))


def quiet(learn, f, *args, **kw):
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return f(*args, **kw)


def assert_same_weights(a, b):
    sa, sb = a.state_dict() if hasattr(a, 'state_dict') else a, b.state_dict() if hasattr(b, 'state_dict') else b
    assert sa.keys() == sb.keys()
    for k in sa: assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope='module')
def run_a(store_path, tmp_path_factory):
    a = make_learner(store_path, [ValidateEvery(4, path=tmp_path_factory.mktemp('va')), NaNGuard(), LRLog()])
    quiet(a, a.fit_iters, 30)
    return a


@pytest.mark.parametrize('crash_at', [12, 10])   # mid-epoch (epochs are 5 iterations) and on an epoch boundary
def test_resume_equals_uninterrupted(store_path, run_a, tmp_path, crash_at):
    b = make_learner(store_path, [ValidateEvery(4, path=tmp_path/'vb'), NaNGuard(), LRLog(), Crash(crash_at)])
    with pytest.raises(KeyboardInterrupt): quiet(b, b.fit_iters, 30, cbs=[CheckpointEvery(n_iter=6, path=tmp_path/'ck')])
    man = json.loads((tmp_path/'ck'/'last.json').read_text())
    start = 12 if crash_at == 12 else 6
    assert (man['iter'], man['total']) == (start, 30)
    assert len(list((tmp_path/'ck').glob('last-*'))) == 3     # the previous checkpoint's files are gone
    c = make_learner(store_path, [ValidateEvery(4, path=tmp_path/'vc'), NaNGuard(), LRLog()])
    assert quiet(c, resume, c, tmp_path/'ck') == 30 - start
    assert c.train_iter == 30
    assert_same_weights(run_a.model, c.model)                                # exact: torch.equal
    assert_same_weights(run_a.ema.shadow, c.ema.shadow)
    assert c.lr_log.log == run_a.lr_log.log[start:]                      # same LRs and losses, iteration by iteration
    assert c.validate_every.history == run_a.validate_every.history
    assert c.validate_every.best == run_a.validate_every.best
    sa, sc = run_a.opt.state_dict(), c.opt.state_dict()
    for x, y in zip(sa['state'], sc['state']):
        assert x.keys() == y.keys()
        for k in x: assert torch.equal(x[k], y[k]) if isinstance(x[k], torch.Tensor) else x[k] == y[k]


def test_state_is_weights_only(store_path, tmp_path):
    learn = make_learner(store_path, [NaNGuard()])
    quiet(learn, learn.fit_iters, 3, cbs=[CheckpointEvery(2, tmp_path)])
    man = json.loads((tmp_path/'last.json').read_text())
    assert man['iter'] == 3 and set(man['files']) == {'model', 'ema', 'state'}
    st = torch.load(tmp_path/man['files']['state'], weights_only=True)
    assert st['iter'] == 3 and st['sampler'] == {'seed': 0, 'epoch': 1}
    assert isinstance(st['rng']['torch'], torch.Tensor) and st['nan_guard']['n_skipped'] == 0
    ck = read_checkpoint(tmp_path)
    assert_same_weights(ck['model'], learn.model)
    assert quiet(learn, resume, make_learner(store_path), tmp_path) == 0     # the run was complete


def test_damaged_checkpoints(store_path, tmp_path):
    learn = make_learner(store_path)
    quiet(learn, learn.fit_iters, 2, cbs=[CheckpointEvery(1, tmp_path)])
    man = json.loads((tmp_path/'last.json').read_text())
    model = tmp_path/man['files']['model']
    data = model.read_bytes()
    model.write_bytes(data[:-10])                                            # truncated
    with pytest.raises(CheckpointError, match='truncated') as e: resume(make_learner(store_path), tmp_path)
    assert str(model) in str(e.value)
    model.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))                     # same size, altered
    with pytest.raises(CheckpointError, match='SHA-256') as e: read_checkpoint(tmp_path)
    assert str(model) in str(e.value)
    model.unlink()
    with pytest.raises(CheckpointError, match='missing') as e: read_checkpoint(tmp_path)
    assert str(model) in str(e.value)
    (tmp_path/'last.json').unlink()
    with pytest.raises(CheckpointError, match='last.json') as e: resume(make_learner(store_path), tmp_path)
    assert 'does not exist' in str(e.value)
    (tmp_path/'last.json').write_text('{"format": "restorekit-checkpoint", ')
    with pytest.raises(CheckpointError, match='corrupt'): read_checkpoint(tmp_path)


CHILD = textwrap.dedent('''
    import sys, time, warnings
    warnings.simplefilter('ignore')
    import torch
    from fastai.callback.core import Callback
    sys.path.insert(0, {testdir!r})
    from test_resume import make_learner
    from restorekit.callbacks import fit_resumable
    torch.set_num_threads(1)
    class Slow(Callback):
        def after_batch(self):
            if self.training and self.train_iter >= 6: time.sleep(0.5)
    learn = make_learner({store!r}, [Slow()])
    with learn.no_bar(), learn.no_logging(): fit_resumable(learn, 30, {ck!r}, every=6)
''')


def test_sigkill_then_resume(store_path, run_a, tmp_path):
    ck = tmp_path/'ck'
    code = CHILD.format(testdir=os.path.dirname(__file__), store=str(store_path), ck=str(ck))
    p = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        t0, limit = time.time(), patience(300)   # hang guard: the first checkpoint comes after 6 iterations (seconds)
        while not (ck/'last.json').exists():
            assert p.poll() is None, p.stdout.read().decode()
            assert time.time() - t0 < limit, f'no checkpoint after {limit:.0f} s'
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(patience(60))   # hang guard: a SIGKILLed process is reaped at once
    finally:
        if p.poll() is None: p.kill(); p.wait()
    assert p.returncode == -signal.SIGKILL
    done = read_checkpoint(ck)['manifest']['iter']
    assert 6 <= done < 30
    learn = make_learner(store_path)
    assert quiet(learn, fit_resumable, learn, 30, ck, every=6) == 30 - done
    assert_same_weights(run_a.model, learn.model)


@pytest.mark.parametrize('crash_at', [7, 14])   # inside the frozen phase, and after it
def test_resume_with_frozen_body(store_path, tmp_path, crash_at):
    "`FreezeFor` follows the iteration counter: a run resumed inside or after the frozen phase equals the uninterrupted one."
    from restorekit.callbacks import FreezeFor
    a = make_learner(store_path, [FreezeFor(10)])
    a.lr = slice(1e-4, 1e-3)
    quiet(a, a.fit_iters, 20)
    b = make_learner(store_path, [FreezeFor(10), Crash(crash_at)])
    b.lr = slice(1e-4, 1e-3)
    with pytest.raises(KeyboardInterrupt): quiet(b, b.fit_iters, 20, cbs=[CheckpointEvery(n_iter=3, path=tmp_path)])
    c = make_learner(store_path, [FreezeFor(10)])
    c.lr = slice(1e-4, 1e-3)
    assert quiet(c, resume, c, tmp_path) == 20 - 3 * (crash_at // 3)
    assert_same_weights(a.model, c.model)
    assert_same_weights(a.ema.shadow, c.ema.shadow)
    assert all(p.requires_grad for p in c.model.parameters())
