"""Smoke test of fastai's `learn.distrib_ctx()` (accelerate DDP) on a restorekit learner: 2 CPU processes over gloo.

The test spawns 2 worker processes (env `RANK`, `WORLD_SIZE=2`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`,
`OMP_NUM_THREADS=1`) that each build the tiny CPU learner of test_resume.py and train it inside
`learn.distrib_ctx(cpu=True)` (`cpu=True` is passed on to accelerate's `Accelerator`: without it accelerate sees no
GPU and stays `DistributedType.NO`, so nothing is distributed). Each rank writes a JSON report; the tests check that
both ranks finish, train a `DistributedDataParallel` model for exactly the iterations asked, end with bit-identical
weights (EMA included), see finite losses, report the same gathered PSNR, and draw *different* patches (fastai's
`DistributedDL` shards the `PatchSampler` pairs, and the sampler draws `world_size` times as many per pass).

This works because of four things in restorekit.learner/metrics: fastai 2.8's `DistributedDL._broadcast` hard-codes
`.cuda()` (replaced with a backend-aware version), `TrainPatches` takes the `[index, crop seed]` lists the broadcast
returns, `EMACallback` works on the bare model (not `module.`-prefixed DDP keys), and `AvgImageMetric` gathers its
per-image values with `learn.to_detach`.
"""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip('accelerate', reason="fastai's distrib_ctx needs `accelerate` (pip install accelerate)")
if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    pytest.skip('torch.distributed with the gloo backend is not available', allow_module_level=True)

from restorekit.core import sample_images
from restorekit.learner import TrainPatches
from restorekit.silver import SilverStore, build_silver
from conftest import patience   # hang guards scaled by the machine's load

N_ITER = 6      # fit_iters(N_ITER); epoch_len=5, bs=4
TIMEOUT = 300   # hang guard for both workers (a deadlocked rendezvous); ~15 s on 2 quiet cores, scaled by `patience`

WORKER = r'''
import hashlib, json, math, os, sys, warnings
import torch
torch.set_num_threads(1)
from restorekit.core import sample_images
from restorekit.learner import default_metrics, restoration_dls, restoration_learner
from restorekit.losses import RestorationLoss
from restorekit.silver import SilverStore
with warnings.catch_warnings():
    warnings.filterwarnings('ignore', category=FutureWarning)
    from fastai.callback.core import Callback

store, out, n_iter = sys.argv[1], sys.argv[2], int(sys.argv[3])
rank = int(os.environ['RANK'])


class Probe(Callback):
    "Record a hash of every training HR batch and every training loss."
    order = 99
    def before_fit(self): self.seen, self.losses, self.dl_types = [], [], set()
    def after_batch(self):
        if not self.training: return
        self.dl_types.add(type(self.learn.dl).__name__)
        self.seen.append(hashlib.sha1(self.learn.yb[0].detach().cpu().numpy().tobytes()).hexdigest())
        self.losses.append(float(self.learn.loss.detach()))

def train(ema, n_iter):
    "Train a fresh tiny learner under distrib_ctx; return what the tests check."
    dls = restoration_dls(SilverStore(store), sample_images()[8:10], bs=4, patch=32, scale=2, degrade='bicubic',
                          epoch_len=5, valid_crop=64, device='cpu', seed=0)
    probe, info = Probe(), {}
    class Inside(Callback):
        order = 100
        def before_fit(self):
            info['model_type'] = type(self.learn.model).__name__
            info['backend'] = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
            info['world_size'] = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    learn = restoration_learner(dls, 'edsr_baseline', loss=RestorationLoss(l1=1, ms_ssim=0, lpips=0),
                                metrics=default_metrics(2, lpips=False), lr=1e-3, model_kw={'n_feats': 8, 'n_blocks': 2},
                                seed=0, cbs=[probe], ema=ema)
    with learn.no_bar(), learn.distrib_ctx(cpu=True):
        learn.fit_iters(n_iter, cbs=[Inside()])
    sd = learn.model.state_dict()
    h = hashlib.sha1(b''.join(k.encode() + v.detach().cpu().contiguous().numpy().tobytes() for k, v in sd.items())).hexdigest()
    names = learn.recorder.metric_names[1:-1]
    return {'rank': rank, 'hash': h, 'seen': probe.seen, 'losses': probe.losses, 'dl_types': sorted(probe.dl_types),
            'keys': list(sd)[:3], 'after_type': type(learn.model).__name__, **info,
            'recorder': [dict(zip(names, map(float, v))) for v in learn.recorder.values]}

report = {'plain': train(None, n_iter)}
try: report['ema'] = train(0.999, 2)   # the same run with restorekit's default EMA of the weights
except Exception as e: report['ema'] = {'error': f'{type(e).__name__}: {e}'}
json.dump(report, open(os.path.join(out, f'rank{rank}.json'), 'w'))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_workers(tmp, store, n_iter=N_ITER, world=2):
    "Run `world` worker processes; return their return codes, their logs and the JSON reports they wrote."
    script = tmp/'worker.py'
    script.write_text(WORKER)
    out = tmp/'out'
    out.mkdir()
    port, procs, logs = _free_port(), [], []
    for r in range(world):
        env = {**os.environ, 'RANK': str(r), 'LOCAL_RANK': str(r), 'WORLD_SIZE': str(world),
               'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port), 'OMP_NUM_THREADS': '1'}
        log = open(tmp/f'rank{r}.log', 'w')
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, str(script), str(store), str(out), str(n_iter)],
                                      env=env, stdout=log, stderr=subprocess.STDOUT))
    end = time.monotonic() + patience(TIMEOUT)
    try:
        for p in procs: p.wait(timeout=max(1, end - time.monotonic()))
    except subprocess.TimeoutExpired: pass
    finally:
        for p in procs:
            if p.poll() is None: p.kill(); p.wait()
        for log in logs: log.close()
    texts = [(tmp/f'rank{r}.log').read_text() for r in range(world)]
    reports = [json.loads(f.read_text()) if (f := out/f'rank{r}.json').exists() else None for r in range(world)]
    return [p.returncode for p in procs], texts, reports


@pytest.fixture(scope='module')
def store_path(tmp_path_factory):
    dest = tmp_path_factory.mktemp('silver')
    build_silver(sample_images()[:8], dest, patch=48, max_per_image=6, verbose=False)
    return dest


@pytest.fixture(scope='module')
def ddp(tmp_path_factory, store_path):
    "One launch of 2 gloo workers (a run without EMA, then one with it), shared by the tests below."
    rcs, logs, reports = run_workers(tmp_path_factory.mktemp('ddp'), store_path)
    assert rcs == [0, 0], '\n\n'.join(f'rank {r} (rc={rc}):\n{t[-3000:]}' for r, (rc, t) in enumerate(zip(rcs, logs)))
    assert None not in reports
    return reports


@pytest.fixture(scope='module')
def plain(ddp): return [r['plain'] for r in ddp]


def test_ddp_trains_in_sync(plain):
    r0, r1 = plain
    for r in plain:
        assert r['backend'] == 'gloo' and r['world_size'] == 2
        assert r['model_type'] == 'DistributedDataParallel'    # wrapped during fit...
        assert r['after_type'] != 'DistributedDataParallel'    # ...and unwrapped afterwards
        assert not r['keys'][0].startswith('module.')
        assert r['dl_types'] == ['DistributedDL']
        assert r['losses'] and all(math.isfinite(l) for l in r['losses'])
        assert all(math.isfinite(v) for row in r['recorder'] for v in row.values())
    assert len(r0['losses']) == len(r1['losses'])
    assert r0['hash'] == r1['hash']                            # DDP kept the weights identical
    assert r0['recorder'][-1]['train_loss'] == r1['recorder'][-1]['train_loss']  # fastai gathers the loss


def test_ddp_shards_patches(plain):
    "fastai's DistributedDL slices the SamplerDL indices by rank: the ranks train on different patches."
    s0, s1 = (r['seen'] for r in plain)
    assert len(set(s0)) == len(s0) and len(set(s1)) == len(s1)
    assert not set(s0) & set(s1)


def test_ddp_fit_iters_count(plain):
    for r in plain: assert len(r['losses']) == N_ITER


def test_ddp_metrics_agree(plain):
    "The validation loss terms and the per-image PSNR/SSIM are gathered from both ranks: the same numbers on each."
    v0, v1 = ([row for row in r['recorder'] if 'valid_psnr' in row][-1] for r in plain)
    assert v0['valid_l1'] == v1['valid_l1']
    assert v0['valid_psnr'] == pytest.approx(v1['valid_psnr'], rel=1e-9)
    assert v0['valid_ssim'] == pytest.approx(v1['valid_ssim'], rel=1e-9)


def test_ddp_with_ema(ddp):
    e0, e1 = (r['ema'] for r in ddp)
    assert 'error' not in e0, e0['error']
    assert e0['hash'] == e1['hash']


def test_train_patches_accepts_list_keys(store_path):
    ds = TrainPatches(SilverStore(store_path), 32)
    assert torch.equal(ds[[3, 12345]][0], ds[(3, 12345)][0])
