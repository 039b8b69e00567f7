"""Fault test of `restorekit-train`: kill -9 the training process three times at random iterations, resume each time.

The uninterrupted run and the killed-and-resumed run use the same config and seed, each in its own process with one
CPU thread (`OMP_NUM_THREADS=1`). After every kill the checkpoint in the run folder must read back complete (manifest,
sizes and SHA-256 of every file) and lie no later than the kill; after the last resume the run must have finished
with final weights, EMA weights and best weights bit-identical (`torch.equal`) to the uninterrupted run's, and a log
that holds every iteration exactly once. The kill points are drawn at random (the seed is printed on failure:
`RESTOREKIT_FAULT_SEED` replays it): a few iterations past the point the previous process resumed from, so a kill can
land anywhere in an iteration, including in the middle of writing a checkpoint, or before the first checkpoint (then
`--resume` starts the run over).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from restorekit.callbacks import read_checkpoint
from conftest import patience   # hang guards scaled by the machine's load

N_ITER, EVERY = 48, 4
SETS = [f'n_iter={N_ITER}', 'validate_every=8', f'checkpoint_every={EVERY}', 'patch=32', 'bs=4', 'model_kw.n_feats=8',
        'model_kw.n_blocks=1', 'valid_crop=48', 'silver_patch=48']


def _env():
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONHASHSEED='0')
    env.pop('CUDA_VISIBLE_DEVICES', None)
    return env


def _cmd(run: Path, resume: bool) -> list[str]:
    base = [sys.executable, '-m', 'restorekit.train', '--run-dir', str(run)]
    return base + ['--resume'] if resume else base + ['--preset', 'demo', '--set', *SETS]


def _last_train_iter(log: Path) -> int:
    "The last complete training line's iteration in the log (0 if none)."
    if not log.exists(): return 0
    it = 0
    for line in log.read_text().splitlines():
        try: r = json.loads(line)
        except ValueError: continue
        if r.get('type') == 'train': it = r['iter']
    return it


def _kill_at(run: Path, resume: bool, target: int, timeout: float = 300) -> int:
    "Start the CLI, SIGKILL it as soon as its log shows iteration `target`; return the iteration seen at the kill."
    p = subprocess.Popen(_cmd(run, resume), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    try:
        t0, seen, timeout = time.time(), 0, patience(timeout)   # hang guard: the target iteration comes within seconds
        while True:
            seen = _last_train_iter(run / 'log.jsonl')
            if seen >= target: break
            if p.poll() is not None: pytest.fail(f'the run ended (rc {p.returncode}) before iteration {target}: {p.stderr.read().decode()[-2000:]}')
            if time.time() - t0 > timeout: pytest.fail(f'iteration {target} not reached in {timeout:.0f} s')
            time.sleep(0.002)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(patience(60))   # hang guard: a SIGKILLed process is reaped at once
    finally:
        if p.poll() is None: p.kill(); p.wait()
    assert p.returncode == -signal.SIGKILL
    return seen


def _finish(run: Path, resume: bool):
    r = subprocess.run(_cmd(run, resume), capture_output=True, text=True, env=_env(), timeout=patience(600))   # hang guard
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _weights(run: Path) -> dict:
    ck = read_checkpoint(run / 'checkpoint')
    return {'model': ck['model'], 'ema': ck['ema'], 'best': load_file(run / 'best.safetensors')}


def test_kill9_three_times_then_resume(tmp_path):
    seed = int(os.environ.get('RESTOREKIT_FAULT_SEED', random.randrange(10**6)))
    rng = random.Random(seed)
    ref, run = tmp_path / 'uninterrupted', tmp_path / 'killed'
    _finish(ref, resume=False)

    resumed_from, kills = 0, []
    for k in range(3):
        target = min(resumed_from + rng.randint(2, 12), N_ITER - 3)
        seen = _kill_at(run, resume=k > 0, target=target)
        if not (run / 'checkpoint' / 'last.json').exists():          # killed before the first checkpoint was complete:
            assert resumed_from == 0 and seen <= EVERY, (seed, kills, seen)   # the next --resume starts over
            kills.append((target, seen, None))
            continue
        man = read_checkpoint(run / 'checkpoint')['manifest']      # complete and uncorrupted, or this raises
        assert man['total'] == N_ITER and man['iter'] % EVERY == 0
        assert resumed_from <= man['iter'] <= seen, (seed, resumed_from, man['iter'], seen)
        kills.append((target, seen, man['iter']))
        resumed_from = man['iter']
    r = _finish(run, resume=True)
    assert 'Run folder' in r.stdout

    a, b = _weights(ref), _weights(run)
    for part in a:
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f'{part}/{key} differs (seed {seed}, kills {kills})'
    log = [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()]
    assert [r['iter'] for r in log if r['type'] == 'train'] == list(range(1, N_ITER + 1)), f'seed {seed}, kills {kills}'
    ref_log = [json.loads(line) for line in (ref / 'log.jsonl').read_text().splitlines()]
    assert [r['loss'] for r in log if r['type'] == 'train'] == [r['loss'] for r in ref_log if r['type'] == 'train']
    sa, sb = (json.loads((d / 'summary.json').read_text()) for d in (ref, run))
    assert (sa['best_iter'], sa['best_psnr'], sa['psnr_model']) == (sb['best_iter'], sb['best_psnr'], sb['psnr_model'])
