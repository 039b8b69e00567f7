"""The same fastai contract, tested on both of restorekit's learners (restoration and 2AFC metric training):
calls before any training and twice over, an error inside fastai's validation context that must not leave the learner
locked, fastai's own tracker callbacks (`SaveModelCallback`, `EarlyStoppingCallback`, `ReduceLROnPlateau`) with their
defaults, a `monitor` that is not a Recorder column, fastai's whole `load` signature, `predict` refusing a float image
in 0-255, and `export` / `load_learner`."""
from __future__ import annotations

import warnings

import pytest
import torch

from restorekit.contract import ContractLearner, MonitorError
from restorekit.core import sample_images
from restorekit.learner import default_metrics, restoration_dls, restoration_learner
from restorekit.losses import RestorationLoss
from restorekit.twoafc import bapps_2afc, make_2afc
from restorekit.twoafc_train import twoafc_dls, twoafc_learner, twoafc_model

with warnings.catch_warnings():
    warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
    from fastai.basics import Callback, load_learner
    from fastai.callback.tracker import EarlyStoppingCallback, ReduceLROnPlateau, SaveModelCallback

pytestmark = pytest.mark.usefixtures('one_thread')   # conftest.py


@pytest.fixture(scope='module')
def afc_sets(tmp_path_factory):
    "A small offline 2AFC set (synthetic judgments)."
    root = make_2afc(sample_images(), tmp_path_factory.mktemp('afc') / 'set', n_train=40, n_val=20, seed=0)
    return bapps_2afc(root, 'train', in_memory=True), bapps_2afc(root, 'val', in_memory=True)


def _quiet(learn):
    learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == 'ProgressCallback'])
    learn.logger = lambda *a, **k: None
    return learn


@pytest.fixture(params=['restoration', 'twoafc'])
def kind(request): return request.param


@pytest.fixture
def make(kind, store, valid_imgs, afc_sets, tmp_path):
    "A factory of fresh, untrained learners of `kind` (store / valid_imgs: conftest.py)."
    def f(**kw):
        if kind == 'restoration':
            dls = restoration_dls(store, valid_imgs, bs=4, patch=32, scale=2, degrade='bicubic', epoch_len=4, valid_crop=48,
                                  seed=0, device='cpu')
            return _quiet(restoration_learner(dls, 'edsr_baseline', loss=RestorationLoss(l1=1, ms_ssim=0, lpips=0),
                                              metrics=default_metrics(2, lpips=False), lr=1e-3, ema=None,
                                              model_kw=dict(n_feats=8, n_blocks=1), path=tmp_path, **kw))
        trn, val = afc_sets
        return _quiet(twoafc_learner(twoafc_dls(trn, val, bs=20, device='cpu'), twoafc_model('alex', 'lin', 'random', seed=0),
                                     lr=1e-3, keep_best=False, path=tmp_path, **kw))
    return f


def _an_input(kind, learn):
    "One input for `predict`, as the learner takes it, in [0,1]."
    if kind == 'restoration': return learn.dls.valid.dataset.pairs[0][0]
    ref, p0, p1, _ = learn.dls.valid.dataset[0]
    return tuple((t + 1) / 2 for t in (ref, p0, p1))   # the 2AFC loaders give [-1, 1]


def test_both_learners_are_contract_learners(make):
    assert isinstance(make(), ContractLearner)


def test_validate_and_get_preds_before_training_and_twice(make):
    learn = make()
    v1 = learn.validate()
    preds, targs = learn.get_preds()
    v2 = learn.validate()   # fastai's own context would hang here after a failure in the first
    assert list(map(float, v1)) == list(map(float, v2))
    assert len(preds) == len(targs) > 0
    assert learn.opt is None or learn.opt is not None   # nothing above needed an optimizer ...
    assert not learn.lock.locked()
    learn.fit(1)                                        # ... and training still works after them
    assert len(learn.recorder.values) == 1


class _Boom(Callback):
    "Fails while fastai's validation context is entered."
    def before_fit(self): raise RuntimeError('boom')


def test_an_error_in_the_validation_context_leaves_no_lock(make):
    learn = make()
    learn.add_cb(_Boom())
    for _ in range(2):
        with pytest.raises(RuntimeError, match='boom'): learn.validate()
        assert not learn.lock.locked()
        with pytest.raises(RuntimeError, match='boom'): learn.get_preds()
        assert not learn.lock.locked()
    learn.remove_cb(_Boom)
    assert all(cb.run for cb in learn.cbs)
    assert learn.validate() is not None


def test_fastai_trackers_with_their_defaults(make):
    learn = make()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')   # "holds no optimizer state": SaveModelCallback saves with_opt=False by default
        learn.fit(2, cbs=[SaveModelCallback(), EarlyStoppingCallback(), ReduceLROnPlateau()])
    f = learn.path / learn.model_dir / 'model.pth'
    assert f.is_file()
    saved = torch.load(f, weights_only=True)
    saved = saved.get('model', saved)
    now = learn.model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in saved.items())   # the best epoch's weights were loaded back


def test_early_stopping_stops(make):
    learn = make()
    learn.fit(5, cbs=EarlyStoppingCallback(min_delta=1e9, patience=1))   # nothing is ever an improvement of 1e9
    assert len(learn.recorder.values) == 2


def test_reduce_lr_on_plateau_acts_through_the_schedule(make):
    "The learner's schedule sets the rate each batch; a reduction by ReduceLROnPlateau must still take effect."
    class LRs(Callback):
        order = 90
        def before_fit(self): self.seen = []
        def after_batch(self):
            if self.training: self.seen.append((self.epoch, self.opt.hypers[-1]['lr']))
    rec, ref = LRs(), LRs()
    make().fit(3, cbs=[ReduceLROnPlateau(min_delta=1e9, patience=1, factor=10), rec])
    make().fit(3, cbs=[ref])
    first = lambda seen: {e: lr for e, lr in reversed(seen)}   # the first batch's rate of each epoch
    last, last_ref = first(rec.seen), first(ref.seen)
    # epoch 0 is always a first best; epoch 1 is no improvement of 1e9, so the rate is divided by 10 from epoch 2 on
    assert last[0] == pytest.approx(last_ref[0]) and last[1] == pytest.approx(last_ref[1])
    assert last[2] == pytest.approx(last_ref[2] / 10, rel=0.02)   # (a cosine's floor eta_min is not divided)


def test_a_monitor_that_is_not_a_column_is_named(make, kind):
    learn = make()
    bad, right = ('psnr', 'valid_psnr') if kind == 'restoration' else ('2afc', 'twoafc')
    with pytest.raises(MonitorError) as e: learn.fit(1, cbs=SaveModelCallback(monitor=bad))
    msg = str(e.value)
    assert '\n' not in msg and f"monitor={bad!r}" in msg and repr(right) in msg and 'Exception occured' not in msg
    assert learn.fit(1) is None and not learn.in_fit   # the learner is fine afterwards


def test_load_takes_fastais_signature(make):
    learn = make()
    learn.fit(1)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    learn.save('m')
    with torch.no_grad():
        for p in learn.model.parameters(): p.add_(1)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        assert learn.load('m', device='cpu', with_opt=False, strict=True, weights_only=False) is learn
    assert all(torch.equal(learn.model.state_dict()[k], v) for k, v in before.items())


def test_load_never_unpickles_code(make, tmp_path):
    learn = make()
    learn.fit(1)
    class Evil:
        def __reduce__(self): return (exec, ("open(r'%s', 'w').write('ran')" % (tmp_path / 'pwned'),))
    (learn.path / learn.model_dir).mkdir(parents=True, exist_ok=True)
    torch.save({'model': learn.model.state_dict(), 'x': Evil()}, learn.path / learn.model_dir / 'evil.pth')
    with pytest.raises(Exception, match='Weights only load failed'): learn.load('evil', weights_only=False)
    assert not (tmp_path / 'pwned').exists()


def test_predict_refuses_a_float_image_in_0_255(make, kind):
    learn = make()
    x = _an_input(kind, learn)
    bad = x * 255 if kind == 'restoration' else (x[0] * 255, x[1], x[2])
    with pytest.raises(ValueError, match=r'must be in \[0,1\].*looks like 0-255: divide by 255'): learn.predict(bad)
    with warnings.catch_warnings():
        warnings.simplefilter('error')   # e.g. torch's "NumPy array is not writable" for a PIL image
        from PIL import Image
        def pil(t): return Image.fromarray((t.permute(1, 2, 0).numpy() * 255).round().astype('uint8'))
        learn.predict(pil(x) if kind == 'restoration' else tuple(pil(t) for t in x))


def test_export_and_load_learner(make, kind, tmp_path):
    learn = make()
    learn.fit(1)
    x = _an_input(kind, learn)
    out = learn.predict(x)
    learn.export(tmp_path / 'l.pkl')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        back = load_learner(tmp_path / 'l.pkl')
    assert isinstance(back, ContractLearner)
    again = back.predict(x)
    if kind == 'restoration': assert torch.allclose(out[1], again[1], atol=1e-6)
    else: assert out == pytest.approx(again, abs=1e-6)
