"""Cross-module tests of 2AFC metric training: projection after every step, paradigms and the trunk, cached lin = end-to-end
lin, the fastai contract, export into LPIPS / RestorationLoss, the restorekit-2afc CLI (run folder, resume, errors).
All data here is the offline set of `make_2afc` (synthetic judgments) or generated tensors; trunks have random weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fastai.basics import Callback, load_learner

from restorekit.core import sample_images
from restorekit.perceptual import LPIPS
from restorekit.twoafc import make_2afc, bapps_2afc, score_2afc
from restorekit.twoafc_train import (twoafc_model, twoafc_learner, twoafc_dls, cached_lin_learner, NonNegative, negative_fraction,
                                     trunk_1x1_convs, save_metric, load_metric, score_model, TwoAFCLoss, KeepBest)
from restorekit.twoafc_run import train_metric, load_twoafc_config, twoafc_cli, EpochCheckpoint


@pytest.fixture(scope='module')
def sets(tmp_path_factory):
    root = make_2afc(sample_images(), tmp_path_factory.mktemp('afc')/'set', n_train=120, n_val=60, seed=0)
    return bapps_2afc(root, 'train', in_memory=True), bapps_2afc(root, 'val', in_memory=True), root


def _quiet(learn):
    learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == 'ProgressCallback']); learn.logger = lambda *a, **k: None
    return learn


class MinAfterStep(Callback):
    "Record the smallest head weight after every optimizer step (after `NonNegative`)."
    order = 90
    def before_fit(self): self.mins = []
    def after_step(self): self.mins.append(min(float(l[1].weight.detach().min()) for l in self.learn.model.metric.lins))


@pytest.mark.parametrize('paradigm', ['lin', 'tune'])
def test_projection_keeps_heads_nonnegative_after_every_step(sets, tmp_path, paradigm):
    trn, val, _ = sets
    m = twoafc_model('alex', paradigm, 'random', seed=0)
    rec = MinAfterStep()
    learn = _quiet(twoafc_learner(twoafc_dls(trn, val, bs=20, device='cpu'), m, lr=5e-2, keep_best=False, path=tmp_path, cbs=[rec]))
    learn.fit(1)
    assert len(rec.mins) == 6 and min(rec.mins) >= 0
    # without the projection the same large steps make weights negative: the check above can fail
    m2 = twoafc_model('alex', paradigm, 'random', seed=0)
    rec2 = MinAfterStep()
    _quiet(twoafc_learner(twoafc_dls(trn, val, bs=20, device='cpu'), m2, lr=5e-2, nonneg=None, keep_best=False, path=tmp_path, cbs=[rec2])).fit(1)
    assert min(rec2.mins) < 0


def test_trunk_1x1_projection_is_explicit(sets, tmp_path):
    trn, val, _ = sets
    for flag in (False, True):
        m = twoafc_model('squeeze', 'scratch', seed=0)
        convs = trunk_1x1_convs(m)
        assert len(convs) == 16 and all(c.kernel_size == (1, 1) for c in convs)   # squeezenet1_1's Fire modules: squeeze + expand1x1
        with torch.no_grad(): convs[0].weight[0, 0] = -1.                          # a negative trunk weight
        _quiet(twoafc_learner(twoafc_dls(trn, val, bs=60, device='cpu'), m, keep_best=False, path=tmp_path,
                              cbs=[], trunk_1x1=flag, lr=1e-6)).fit(1, cbs=[])
        assert (float(convs[0].weight.min()) >= 0) == flag


@pytest.mark.parametrize('method', ['penalty', 'barrier'])
def test_penalty_and_barrier_alternatives(sets, tmp_path, method):
    trn, val, _ = sets
    m = twoafc_model('alex', 'lin', 'random', seed=0)
    learn = _quiet(twoafc_learner(twoafc_dls(trn, val, bs=20, device='cpu'), m, lr=1e-2, nonneg=method, keep_best=False, path=tmp_path))
    learn.fit(1)
    assert all(np.isfinite(v) for v in learn.recorder.values[-1])
    if method == 'barrier': assert negative_fraction(m) == 0   # the barrier clamps at eps: feasible throughout
    with pytest.raises(ValueError, match="'project', 'penalty' or 'barrier'"): NonNegative('clip')


def test_paradigms_and_the_trunk(sets, tmp_path):
    trn, val, _ = sets
    for par in ('lin', 'scratch', 'tune'):
        m = twoafc_model('alex', par, None if par == 'scratch' else 'random', seed=0)
        before = {k: v.clone() for k, v in m.metric.trunk.state_dict().items()}
        _quiet(twoafc_learner(twoafc_dls(trn, val, bs=40, device='cpu'), m, keep_best=False, path=tmp_path)).fit(1)
        changed = [k for k, v in m.metric.trunk.state_dict().items() if not torch.equal(before[k], v)]
        assert (changed == []) == (par == 'lin'), (par, changed[:3])


def test_tune_uses_discriminative_lrs(sets, tmp_path):
    trn, val, _ = sets
    learn = twoafc_learner(twoafc_dls(trn, val, bs=40, device='cpu'), twoafc_model('alex', 'tune', 'random'), path=tmp_path)
    learn.create_opt(); learn.opt.set_hypers(lr=learn.lr)
    assert [h['lr'] for h in learn.opt.hypers] == [1e-5, 1e-4]
    assert learn.opt.hypers[0]['mom'] == 0.5 and learn.opt.hypers[0]['sqr_mom'] == 0.999 and learn.opt.hypers[0]['wd'] == 0


@pytest.mark.parametrize('net', ['squeeze', 'sr'])
def test_cached_lin_equals_end_to_end_lin(sets, tmp_path, net):
    trn, val, _ = sets
    kw = dict(weights='random') if net != 'sr' else dict(weights=None)
    if net == 'sr': trn, val = torch.utils.data.Subset(trn, range(30)), torch.utils.data.Subset(val, range(20))   # IMDN runs at full resolution: slow on CPU
    def run(cached):
        if net == 'sr':
            from restorekit.twoafc_train import sr_trunk, PerceptualMetric, Dist2Logit, _TwoAFCModel
            torch.manual_seed(0)
            m = _TwoAFCModel(PerceptualMetric(sr_trunk(None, 'imdn', 2, layers=('fea_conv', 'IMDB1')).requires_grad_(False), dropout=0.), Dist2Logit())
            m.spec = dict(net='sr', paradigm='lin', rank='dist2logit', input_range=[0, 1], dropout=0.)
        else: m = twoafc_model(net, 'lin', dropout=0., seed=2, **kw)
        o = dict(lr=1e-3, keep_best=False, path=tmp_path)
        l = cached_lin_learner(m, trn, val, bs=30, seed=5, device='cpu', **o) if cached else twoafc_learner(twoafc_dls(trn, val, bs=30, seed=5, device='cpu'), m, **o)
        _quiet(l).fit(2)
        return m, l
    (a, la), (c, lc) = run(False), run(True)
    for wa, wc in zip(a.metric.head_weights, c.metric.head_weights): torch.testing.assert_close(wa, wc, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(la.recorder.values[-1], lc.recorder.values[-1], atol=1e-4)


def test_recorder_twoafc_column_is_the_official_score(sets, tmp_path):
    trn, val, _ = sets
    m = twoafc_model('alex', 'lin', 'random', seed=0)
    learn = _quiet(twoafc_learner(twoafc_dls(trn, val, bs=40, device='cpu'), m, keep_best=False, path=tmp_path))
    learn.fit(2)
    names = learn.recorder.metric_names[1:-1]
    col = dict(zip(names, learn.recorder.values[-1]))
    assert names[:4] == ['train_loss', 'valid_loss', 'twoafc', 'agreement']
    assert col['twoafc'] == pytest.approx(score_model(m, val, device='cpu')['twoafc'], abs=1e-6)
    preds, targs = learn.get_preds(ds_idx=1)
    assert preds.shape == (len(val), 3)
    assert col['twoafc'] == pytest.approx(score_2afc(preds[:, 0], preds[:, 1], targs)[0], abs=1e-6)
    assert col['valid_loss'] == pytest.approx(float(TwoAFCLoss()(preds, targs)), abs=1e-5)


def test_keep_best_saves_and_restores_the_best_epoch(sets, tmp_path):
    trn, val, _ = sets
    m = twoafc_model('alex', 'lin', 'random', seed=0)
    learn = _quiet(twoafc_learner(twoafc_dls(trn, val, bs=40, device='cpu'), m, lr=3e-3, path=tmp_path))
    learn.fit(3)
    kb = next(cb for cb in learn.cbs if isinstance(cb, KeepBest))
    scores = [v[2] for v in learn.recorder.values]
    assert kb.best_epoch == int(np.argmax(scores)) + 1 and (tmp_path/'best.safetensors').is_file()
    assert score_model(m, val, device='cpu')['twoafc'] == pytest.approx(max(scores), abs=1e-6)


def test_fastai_contract(sets, tmp_path):
    trn, val, _ = sets
    m = twoafc_model('alex', 'tune', 'random', seed=0)
    learn = _quiet(twoafc_learner(twoafc_dls(trn, val, bs=30, device='cpu'), m, path=tmp_path, keep_best=False))
    learn.fine_tune(1, freeze_epochs=1)
    assert len(learn.validate()) == 3
    p, d0, d1 = learn.predict(tuple(val[0][:3]))
    assert 0 <= p <= 1 and d0 >= 0 and d1 >= 0
    arr = (val[0][0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert learn.predict((arr, arr, arr))[1] == pytest.approx(0, abs=1e-6)
    with pytest.raises(TypeError, match='triplet'): learn.predict(val[0][0])
    assert learn.dls.show_batch(show=False) is not None and learn.show_results(show=False) is not None
    learn.save('w'); learn.load('w')
    learn.export(tmp_path/'l.pkl')
    l2 = load_learner(tmp_path/'l.pkl')
    assert l2.predict(tuple(val[0][:3]))[0] == pytest.approx(p, abs=1e-5)
    lf = _quiet(twoafc_learner(twoafc_dls(trn, val, bs=10, device='cpu'), twoafc_model('alex', 'lin', 'random'), path=tmp_path, keep_best=False))
    r = lf.lr_find(num_it=10, show_plot=False)
    assert r.valley > 0


def test_export_loads_into_lpips_and_trains_a_restoration_model(sets, tmp_path):
    trn, val, _ = sets
    m = twoafc_model('squeeze', 'tune', 'random', seed=0)
    _quiet(twoafc_learner(twoafc_dls(trn, val, bs=40, device='cpu'), m, keep_best=False, path=tmp_path)).fit(1)
    out = save_metric(m, tmp_path/'metric', judgments='synthetic')
    assert {p.name for p in out.iterdir()} == {'metric.json', 'heads.safetensors', 'rank.safetensors', 'trunk.safetensors'}
    lp = LPIPS('squeeze', trunk=out/'trunk.safetensors', heads=out/'heads.safetensors')
    x, y = val[0][0][None], val[0][1][None]
    torch.testing.assert_close(lp(x, y), m.metric.eval()(x, y), atol=1e-5, rtol=1e-4)
    with pytest.raises(FileExistsError, match='overwrite'): save_metric(m, out)
    with pytest.raises(Exception, match='wrong shapes|does not match'): LPIPS('alex', trunk='random', heads=out/'heads.safetensors')
    # the loop closed: a restoration model trains with the calibrated metric
    from restorekit.losses import RestorationLoss
    from restorekit.models import create_model
    net = create_model('edsr_baseline', 2, n_feats=8, n_blocks=1)
    crit = RestorationLoss(l1=0., ms_ssim=0., lpips=1., lpips_model=out)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    hr = torch.stack([val[i][0] for i in range(4)]); lr_ = torch.nn.functional.interpolate(hr, scale_factor=.5, mode='bicubic', antialias=True).clamp(0, 1)
    losses = []
    for _ in range(3):
        loss = crit(net(lr_), hr); opt.zero_grad(); loss.backward(); opt.step(); losses.append(float(loss))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    with pytest.raises(ValueError, match='input_range'): RestorationLoss(lpips=1., lpips_model=out, input_range=(-1, 1))


def test_tapped_sr_metric_saves_and_loads(sets, tmp_path):
    from restorekit.core import shared_data
    sd = shared_data()
    w = sd/'weights_IMDN'/'IMDN_x2.pth' if sd else None
    if w is None or not w.is_file(): pytest.skip('needs ../shared/data/weights_IMDN/IMDN_x2.pth (pretrained SR trunk)')
    trn, val, _ = sets
    trn = torch.utils.data.Subset(trn, range(40))   # IMDN runs at full resolution: slow on CPU
    m = twoafc_model('sr', 'lin', str(w), sr_arch='imdn', sr_scale=2, sr_layers=['fea_conv', 'IMDB1', 'IMDB2'], seed=0)
    learn = cached_lin_learner(m, trn, val, bs=40, device='cpu', path=tmp_path, keep_best=False)
    _quiet(learn).fit(1)
    out = save_metric(m, tmp_path/'sr_metric', judgments='synthetic')
    assert not (out/'trunk.safetensors').exists()    # lin: the pretrained SR weights are referenced, not copied
    back = load_metric(out)
    x, y = val[0][0][None], val[0][2][None]
    torch.testing.assert_close(back(x, y), m.metric.eval()(x, y), atol=1e-6, rtol=1e-5)


def test_cli_train_resume_equals_uninterrupted(tmp_path, monkeypatch):
    ov = ['synthetic.n_train=100', 'synthetic.n_val=50', 'epochs=1', 'decay_epochs=2', 'lr=3e-3']
    cfg = load_twoafc_config(preset='demo', overrides=ov)
    full = train_metric(cfg, run_dir=tmp_path/'full', verbose=False)
    calls = {'n': 0}
    orig = EpochCheckpoint.after_epoch
    def crash(self):
        orig(self); calls['n'] += 1
        if calls['n'] == 2: raise KeyboardInterrupt('simulated kill after epoch 2')
    monkeypatch.setattr(EpochCheckpoint, 'after_epoch', crash)
    with pytest.raises(KeyboardInterrupt): train_metric(cfg, run_dir=tmp_path/'cut', verbose=False)
    monkeypatch.setattr(EpochCheckpoint, 'after_epoch', orig)
    assert len((tmp_path/'cut'/'log.jsonl').read_text().splitlines()) == 2
    assert twoafc_cli(['train', '--resume', '--run-dir', str(tmp_path/'cut')]) == 0
    from safetensors.torch import load_file
    a, b = load_file(full/'metric'/'heads.safetensors'), load_file(tmp_path/'cut'/'metric'/'heads.safetensors')
    for k in a: torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    la = [json.loads(l) for l in (full/'log.jsonl').read_text().splitlines()]
    lb = [json.loads(l) for l in (tmp_path/'cut'/'log.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in lb] == [1, 2, 3]
    for ra, rb in zip(la, lb): assert ra['twoafc'] == pytest.approx(rb['twoafc'], abs=1e-6) and ra['lr'] == pytest.approx(rb['lr'])
    sa, sb = (json.loads((p/'summary.json').read_text()) for p in (full, tmp_path/'cut'))
    assert sa['best_epoch'] == sb['best_epoch'] and sa['val_2afc'] == pytest.approx(sb['val_2afc'], abs=1e-6)
    assert sa['judgments'] == 'synthetic'


def test_cli_errors_are_one_line_and_change_nothing(tmp_path, capsys):
    assert twoafc_cli(['train', '--preset', 'lin_alx']) == 2
    err = capsys.readouterr().err
    assert "did you mean 'lin_alex'" in err and len(err.strip().splitlines()) == 1
    assert twoafc_cli(['train', '--preset', 'demo', '--data', str(tmp_path/'missing'), '--run-dir', str(tmp_path/'r')]) == 2
    assert 'is not a folder' in capsys.readouterr().err and not (tmp_path/'r').exists()
    assert twoafc_cli(['train', '--resume', '--run-dir', str(tmp_path/'nothing')]) == 2
    assert 'not a 2AFC run folder' in capsys.readouterr().err
    assert twoafc_cli(['score', '--metric', str(tmp_path), '--data', str(tmp_path)]) == 2
    assert 'not a saved metric' in capsys.readouterr().err


def test_cli_offline_imagenet_trunk_says_what_to_download(tmp_path, monkeypatch, capsys, sets):
    from restorekit.perceptual import find_trunk_file
    if find_trunk_file('alexnet') is not None: pytest.skip('ImageNet AlexNet weights are cached here')
    monkeypatch.setenv('RESTOREKIT_OFFLINE', '1')
    _, _, root = sets
    assert twoafc_cli(['train', '--preset', 'lin_alex', '--data', str(root), '--run-dir', str(tmp_path/'r')]) == 2
    err = capsys.readouterr().err
    assert 'alexnet' in err and 'download' in err.lower() and len(err.strip().splitlines()) == 1
    assert not (tmp_path/'r').exists()   # refused before anything was written
