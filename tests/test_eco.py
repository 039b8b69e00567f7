"""`restorekit.eco`: ECO and KD in training — the teacher is never trained, α is continuous across `fine_tune` and a
resumed run (bit for bit on the CPU), the on-the-fly teacher gives the stored centroids' batches, bad inputs are refused.

Tiny CPU setup as in test_resume.py: bicubic x2, a 48 px Silver store of the bundled photos, a tiny EDSR student and an
independent tiny EDSR standing in for the pretrained teacher (untrained: these tests check the machinery, not quality).
"""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from restorekit.callbacks import CheckpointEvery, resume
from restorekit.core import sample_images
from restorekit.eco import (ECO, KD, LRNoise, CentroidStore, alpha_sigmoid, bicubic_down, build_centroids, _teacher_mu)
from restorekit.learner import default_metrics, restoration_dls, restoration_learner
from restorekit.losses import RestorationLoss
from restorekit.models import create_model
from restorekit.silver import SilverStore, build_silver
from conftest import patience   # hang guards (subprocess timeouts) scaled by the machine's load

with warnings.catch_warnings():
    warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
    from fastai.callback.core import Callback

pytestmark = pytest.mark.usefixtures('one_thread')   # conftest.py


@pytest.fixture(scope='module')
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp('eco')
    build_silver(sample_images()[:6], d / 'silver', patch=48, max_per_image=6, verbose=False)
    silver = SilverStore(d / 'silver')
    teacher = create_model('edsr_baseline', 2, seed=7, n_feats=8, n_blocks=1)
    build_centroids(teacher, silver, d / 'cent', scale=2, verbose=False)
    return silver, CentroidStore(d / 'cent', silver), teacher


def make(stores, cbs=(), paired=True, epoch_len=5, augment=True):
    silver, cents, _ = stores
    dls = restoration_dls(silver, sample_images()[8:9], bs=4, patch=32, scale=2, degrade='bicubic', epoch_len=epoch_len,
                          valid_crop=64, device='cpu', seed=0, augment=augment, paired=cents if paired else None)
    return restoration_learner(dls, 'edsr_baseline', loss=RestorationLoss(l1=1, ms_ssim=0, lpips=0), metrics=default_metrics(2, lpips=False),
                               lr=1e-3, model_kw={'n_feats': 8, 'n_blocks': 1}, seed=0, cbs=list(cbs))


def quiet(learn, f, *args, **kw):
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return f(*args, **kw)


class Grab(Callback):
    "The (input, target) of every training step, after ECO/KD and the Gold stage."
    order = 0
    def before_fit(self): self.seen = []
    def after_pred(self):
        if self.training: self.seen.append((self.xb[0].clone(), self.yb[0].clone()))


class Crash(Callback):
    order = -40
    def __init__(self, n): self.n = n
    def before_batch(self):
        if self.training and self.train_iter >= self.n: raise KeyboardInterrupt()


def test_teacher_is_never_trained(stores):
    "Store mode and on-the-fly mode: the teacher gets no gradients and its weights are unchanged after training."
    teacher = create_model('edsr_baseline', 2, seed=3, n_feats=8, n_blocks=1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    for cb in (ECO('linear', teacher=teacher), KD(teacher=teacher)):
        learn = make(stores, [cb], paired=False)
        quiet(learn, learn.fit_iters, 4)
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
        assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
        assert cb.teacher_seconds > 0


def test_on_the_fly_teacher_gives_its_centroids(stores):
    "ECO(teacher=...) at α = 0 trains on (↓μ, μ) with μ = teacher(↓y) computed on each crop."
    _, _, teacher = stores
    g = Grab()
    learn = make(stores, [ECO('none', teacher=teacher), g], paired=False)
    quiet(learn, learn.fit_iters, 2)
    van = make(stores, [Grab()], paired=False)
    quiet(van, van.fit_iters, 2)
    for (x, t), (xv, yv) in zip(g.seen, van.grab.seen):
        mu = _teacher_mu(teacher, bicubic_down(yv, 2))
        assert torch.equal(t, mu) and torch.equal(x, bicubic_down(mu, 2))


def test_kd_pairs_the_real_input_with_the_teacher_output(stores):
    _, _, teacher = stores
    g = Grab()
    learn = make(stores, [KD(teacher=teacher), g], paired=False)
    quiet(learn, learn.fit_iters, 2)
    van = make(stores, [Grab()], paired=False)
    quiet(van, van.fit_iters, 2)
    for (x, t), (xv, _) in zip(g.seen, van.grab.seen):
        assert torch.equal(x, xv) and torch.equal(t, _teacher_mu(teacher, xv))
    g2 = Grab()
    stored = make(stores, [KD(), g2])                       # from the centroid store: the same input as vanilla
    quiet(stored, stored.fit_iters, 2)
    assert all(torch.equal(x, xv) for (x, _), (xv, _) in zip(g2.seen, van.grab.seen))


def test_gold_eco_degrades_the_mixed_target(stores):
    "ECO with a Gold pipeline ('light'): each sample's own random degradation is applied to its mixed target; α = 1 is vanilla."
    silver, cents, _ = stores
    def batches(cbs):
        dls = restoration_dls(silver, sample_images()[8:9], bs=4, patch=32, scale=2, degrade='light', epoch_len=3, valid_crop=64,
                              device='cpu', seed=0, paired=cents)
        g = Grab()
        learn = restoration_learner(dls, 'edsr_baseline', loss=RestorationLoss(l1=1, ms_ssim=0, lpips=0), metrics=[], lr=1e-3,
                                    model_kw={'n_feats': 8, 'n_blocks': 1}, seed=0, cbs=list(cbs) + [g])
        quiet(learn, learn.fit_iters, 3)
        return g.seen
    van, one, zero = batches([]), batches([ECO(lambda p: 1.0)]), batches([ECO('none')])
    for (x, y), (x1, y1), (x0, y0) in zip(van, one, zero):
        assert torch.equal(x, x1) and torch.equal(y, y1)               # α = 1: the vanilla Gold batch, bit for bit
        assert not torch.equal(x0, x) and x0.shape == x.shape          # α = 0: the degraded centroids, not the real input


def test_alpha_continues_across_fine_tune(stores):
    "fine_tune's two fits (1 frozen epoch + 2 epochs of 5 iterations): one schedule over 15 iterations."
    learn = make(stores, [ECO('sigmoid')])
    quiet(learn, learn.fine_tune, 2, freeze_epochs=1)
    assert [a for _, a in learn.eco.history] == [alpha_sigmoid(i / 15) for i in range(15)]
    assert learn.eco.alpha == alpha_sigmoid(14 / 15) and not hasattr(learn, 'run_total')


@pytest.mark.parametrize('crash_at', [7, 10])
def test_resume_equals_uninterrupted(stores, tmp_path, crash_at):
    "A run killed mid-way and resumed from its checkpoint ends with the same weights, α history and noise as without the break."
    a = make(stores, [ECO('linear', span=0.6), LRNoise(0.01, seed=1)])
    quiet(a, a.fit_iters, 20)
    b = make(stores, [ECO('linear', span=0.6), LRNoise(0.01, seed=1), Crash(crash_at)])
    with pytest.raises(KeyboardInterrupt): quiet(b, b.fit_iters, 20, cbs=[CheckpointEvery(n_iter=5, path=tmp_path)])
    c = make(stores, [ECO('linear', span=0.6), LRNoise(0.01, seed=1)])
    quiet(c, resume, c, tmp_path)
    assert c.eco.history == a.eco.history and c.eco.it == 20
    for k, v in a.model.state_dict().items(): assert torch.equal(v, c.model.state_dict()[k]), k
    st = torch.load(sorted(tmp_path.glob('last-*.state.pt'))[-1], weights_only=True)   # what the killed run left
    assert st['callbacks']['eco']['it'] == crash_at // 5 * 5 and set(st['callbacks']) == {'eco', 'lr_noise'}


def test_alpha_is_logged_every_iteration(stores, tmp_path):
    from restorekit.callbacks import JSONLLogger
    learn = make(stores, [ECO('linear'), JSONLLogger(path=tmp_path)])
    quiet(learn, learn.fit_iters, 6)
    recs = [json.loads(l) for l in (tmp_path / 'log.jsonl').read_text().splitlines()]
    train = [r for r in recs if r['type'] == 'train']
    assert [r['alpha'] for r in train] == [a for _, a in learn.eco.history] == [i / 6 for i in range(6)]


def test_bad_inputs(stores, tmp_path):
    silver, cents, teacher = stores
    learn = make(stores, [ECO('none')], paired=False)   # no store, no teacher
    with pytest.raises(ValueError, match='needs the centroids'): quiet(learn, learn.fit_iters, 1)
    learn = make(stores, [])
    with pytest.raises(ValueError, match='is the student'): quiet(learn, learn.fit_iters, 1, cbs=[ECO(teacher=learn.model)])
    with pytest.raises(ValueError, match='upscales x4'):
        quiet(learn, learn.fit_iters, 1, cbs=[KD(teacher=create_model('edsr_baseline', 4, n_feats=8, n_blocks=1))])
    build_silver(sample_images()[6:8], tmp_path / 's2', patch=48, max_per_image=3, verbose=False)
    with pytest.raises(ValueError, match='built from another Silver store|paired store has'):
        restoration_dls(SilverStore(tmp_path / 's2'), sample_images()[8:9], bs=4, patch=32, scale=2, degrade='bicubic',
                        paired=CentroidStore(cents.path, SilverStore(tmp_path / 's2')))
    bad = make(stores, [ECO(lambda p: 1.5)])
    with pytest.raises(ValueError, match='alpha must be in'): quiet(bad, bad.fit_iters, 1)


def test_eco_demo_preset_from_a_demo_run(tmp_path):
    "`restorekit-train --preset eco_demo --set eco.teacher=<a demo run folder>`: ECO with a teacher the user trained first."
    import subprocess, sys
    from restorekit.train import load_config, train
    tiny = ['n_iter=6', 'validate_every=3', 'checkpoint_every=3', 'patch=32', 'bs=4', 'model_kw.n_blocks=1', 'valid_crop=64']
    teacher_run = train(load_config(preset='demo', overrides=tiny), run_dir=tmp_path / 'demo', verbose=False)
    r = subprocess.run([sys.executable, '-m', 'restorekit.train', '--preset', 'eco_demo', '--set', *tiny, f'eco.teacher={teacher_run}',
                        'eco.schedule=linear', '--run-dir', tmp_path / 'eco'], capture_output=True, text=True, timeout=patience(600))
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((tmp_path / 'eco' / 'centroids' / 'meta.json').read_text())
    assert meta['complete'] and meta['scale'] == 2
    alphas = [json.loads(l)['alpha'] for l in (tmp_path / 'eco' / 'log.jsonl').read_text().splitlines() if '"train"' in l]
    assert alphas == [i / 6 for i in range(6)]
    r = subprocess.run([sys.executable, '-m', 'restorekit.train', '--preset', 'eco_demo', '--run-dir', tmp_path / 'x'],
                       capture_output=True, text=True, timeout=patience(300))
    assert r.returncode != 0 and 'eco.teacher=' in r.stderr and 'Traceback' not in r.stderr and not (tmp_path / 'x').exists()


def test_lr_find_does_not_advance_alpha(stores):
    learn = make(stores, [ECO('linear')])
    quiet(learn, learn.lr_find, num_it=12, show_plot=False)   # fastai drops the first and last 5 points
    assert learn.eco.it == 0 and learn.eco.history == []
    quiet(learn, learn.fit_iters, 2)
    assert [a for _, a in learn.eco.history] == [0.0, 0.5]
