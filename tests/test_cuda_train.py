"""CUDA paths of training: Gold degradation on the GPU, bf16/fp16 mixed precision through fastai, EMA and the
checkpoint on a CUDA learner, and `train` with `device='cuda'`. Skipped without CUDA (CI has none); run on a GPU
machine with `pytest tests/test_cuda_train.py`.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')

from restorekit.callbacks import CheckpointEvery, read_checkpoint, resume
from restorekit.core import sample_images
from restorekit.learner import default_metrics, restoration_dls, restoration_learner
from restorekit.losses import RestorationLoss
from restorekit.silver import SilverStore, build_silver
from restorekit.train import load_config, train


@pytest.fixture(scope='module')
def store(tmp_path_factory):
    dest = tmp_path_factory.mktemp('silver')
    build_silver(sample_images()[:8], dest, patch=128, max_per_image=8, verbose=False)
    return SilverStore(dest)


def make(store, degrade='realesrgan', **kw):
    dls = restoration_dls(store, sample_images()[8:10], bs=8, patch=96, scale=2, degrade=degrade, epoch_len=10,
                          valid_crop=128, device='cuda', seed=0)
    return restoration_learner(dls, 'edsr_baseline', loss=RestorationLoss(l1=1, ms_ssim=0.2, lpips=0),
                               metrics=default_metrics(2, lpips=False), lr=1e-3, model_kw={'n_feats': 32, 'n_blocks': 4},
                               seed=0, **kw)


class Seen:
    "Records the dtype of the model output and where the batches live."
    def __init__(self): self.dtypes, self.devices = set(), set()


@pytest.mark.parametrize('mp', [None, 'bf16', 'fp16'])
def test_mixed_precision_training(store, mp):
    from fastai.callback.core import Callback
    seen = Seen()
    class Probe(Callback):
        order = 99
        def after_pred(self):
            if self.training: seen.devices.add(self.learn.xb[0].device.type)
    learn = make(store, mixed_precision=mp, cbs=[Probe()])
    # the dtype the body computes in (fastai's MixedPrecision casts `pred` back to float32 after the forward)
    body_conv = next(m for m in learn.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    body_conv.register_forward_hook(lambda m, i, o: seen.dtypes.add(o.dtype) if m.training else None)
    p0 = [p.detach().clone() for p in learn.model.parameters()]
    with learn.no_bar(), learn.no_logging(): learn.fit_iters(20)
    assert seen.devices == {'cuda'}
    want = {None: torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}[mp]
    assert seen.dtypes == {want}, seen.dtypes
    assert all(p.dtype == torch.float32 for p in learn.model.parameters())        # master weights stay float32
    assert any(not torch.equal(a, b) for a, b in zip(p0, learn.model.parameters()))
    vals = learn.recorder.values[-1]
    assert all(math.isfinite(float(v)) for v in vals), vals
    losses = [float(l) for l in learn.recorder.losses]
    assert sum(losses[-5:]) < sum(losses[:5]), losses                               # it learns


def test_checkpoint_resume_on_cuda(store, tmp_path):
    "A CUDA run checkpointed at iteration 6 resumes to the same place (close, not bit-exact: cuDNN picks kernels)."
    from fastai.callback.core import Callback
    class Crash(Callback):
        order = -40
        def before_batch(self):
            if self.training and self.train_iter >= 6: raise KeyboardInterrupt()
    a = make(store, degrade='bicubic')
    with a.no_bar(), a.no_logging(): a.fit_iters(12)
    b = make(store, degrade='bicubic', cbs=[Crash()])
    with pytest.raises(KeyboardInterrupt), b.no_bar(), b.no_logging(): b.fit_iters(12, cbs=[CheckpointEvery(3, tmp_path)])
    assert read_checkpoint(tmp_path)['manifest']['iter'] == 6
    c = make(store, degrade='bicubic')
    with c.no_bar(), c.no_logging(): assert resume(c, tmp_path) == 6
    for (k, x), y in zip(a.model.state_dict().items(), c.model.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-4, rtol=1e-3), (k, (x - y).abs().max())


@pytest.mark.parametrize('mp', [None, 'bf16'])
def test_train_on_cuda_beats_bicubic(tmp_path, mp):
    cfg = load_config(preset='demo', overrides=['device=cuda', 'n_iter=400', 'validate_every=200', 'checkpoint_every=200',
                                                f'mixed_precision={mp or "null"}'])
    run = train(cfg, run_dir=tmp_path / 'run', verbose=False)
    s = json.loads((run / 'summary.json').read_text())
    assert s['psnr_model'] > s['psnr_bicubic'], s
