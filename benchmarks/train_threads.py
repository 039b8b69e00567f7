#!/usr/bin/env python
"""Torch CPU threads for the `demo` preset: 1 thread vs 2, on a quiet machine and on one that is busy, same run.

Why: on a 2-core machine, two OpenMP threads run badly as soon as something else uses a core (oversubscription:
each parallel region waits for the thread that lost its core). The `demo` preset sets `threads=1`; this measures
whether that is the right default.

Workload: the `demo` preset's learner (EDSR-baseline 16 ch x 4 blocks, x2, batch 8 of 64 px crops, `light` Gold
degradation, L1 + 0.2 MS-SSIM, EMA), built with `restoration_dls` / `restoration_learner` exactly as `train` does,
on a Silver store cut from the scikit-image photos. Each arm trains `--iters` iterations (`fit_iters`, the first
`--warmup` excluded from the timed window) with `torch_threads(n)`; only training iterations are timed (a callback
stamps the end of each batch).
Load: `busy` runs one extra process spinning on a core (a plain python busy loop) for the duration of the arm, as
a test, a notebook or another training would; `quiet` runs without it.
Arms: threads in {1, 2} x load in {quiet, busy}, interleaved per round (order alternating). Reported: the median
seconds per iteration of each arm, and the paired ratios (2 threads / 1 thread) per load, as medians over rounds.
Writes benchmarks/results/train_threads.json.

Usage: python benchmarks/train_threads.py [--rounds 3] [--iters 60] [--warmup 5]
"""
import argparse, json, multiprocessing as mp, os, platform, statistics, tempfile, time, warnings
from pathlib import Path

warnings.filterwarnings('ignore')
import torch

from restorekit.core import sample_images
from restorekit.learner import restoration_dls, restoration_learner, default_metrics
from restorekit.losses import RestorationLoss
from restorekit.silver import build_silver, SilverStore
from restorekit.train import DEMO_VALID, load_config, torch_threads

with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    from fastai.callback.core import Callback


def spin(stop):
    "A busy core: what another process on the machine would cost."
    x = 0
    while not stop.is_set(): x += 1


class Stamps(Callback):
    order = 100
    def before_fit(self): self.t = []
    def after_batch(self):
        if self.training: self.t.append(time.perf_counter())


def arm(silver, valid, cfg, threads, busy, iters, warmup) -> float:
    "Median seconds per training iteration of one arm."
    stop = mp.Event()
    p = mp.Process(target=spin, args=(stop,), daemon=True) if busy else None
    if p: p.start(); time.sleep(0.5)
    try:
        with torch_threads(threads):
            dls = restoration_dls(silver, valid, bs=cfg.bs, patch=cfg.patch, scale=cfg.scale, degrade=cfg.degrade,
                                  epoch_len=iters, seed=0, device='cpu', valid_crop=cfg.valid_crop)
            learn = restoration_learner(dls, cfg.arch, loss=RestorationLoss(**cfg.loss), metrics=default_metrics(cfg.scale, lpips=False),
                                        lr=cfg.lr, warmup=cfg.warmup, ema=cfg.ema, model_kw=cfg.model_kw, seed=0)
            learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == 'ProgressCallback']); learn.logger = lambda *a, **k: None
            st = Stamps()
            learn.fit_iters(iters, cbs=st)
    finally:
        if p: stop.set(); p.join()
    dt = [b - a for a, b in zip(st.t[warmup:], st.t[warmup + 1:])]
    return statistics.median(dt)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--iters', type=int, default=60)
    ap.add_argument('--warmup', type=int, default=5)
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'train_threads.json'))
    a = ap.parse_args()
    cfg = load_config(preset='demo')
    tmp = Path(tempfile.mkdtemp())
    photos = sample_images()
    build_silver([p for p in photos if p.name not in DEMO_VALID], tmp/'silver', patch=2 * cfg.patch, max_per_image=32,
                 seed=0, n_workers=0, verbose=False)
    silver, valid = SilverStore(tmp/'silver'), [p for p in photos if p.name in DEMO_VALID]
    arms = [(t, b) for b in (False, True) for t in (1, 2)]
    res = {f"{'busy' if b else 'quiet'}_t{t}": [] for t, b in arms}
    for r in range(a.rounds):
        for t, b in (arms if r % 2 == 0 else arms[::-1]):
            s = arm(silver, valid, cfg, t, b, a.iters, a.warmup)
            res[f"{'busy' if b else 'quiet'}_t{t}"].append(s)
            print(f"round {r} {'busy ' if b else 'quiet'} threads={t}: {s * 1000:.1f} ms/iter", flush=True)
    out = {'what': 'demo preset, median seconds per training iteration', 'cpu_count': os.cpu_count(),
           'machine': platform.machine(), 'torch': torch.__version__, 'rounds': a.rounds, 'iters': a.iters, 'warmup': a.warmup,
           'seconds_per_iter': {k: statistics.median(v) for k, v in res.items()}, 'per_round': res,
           'ratio_2_over_1': {ld: statistics.median([x2 / x1 for x1, x2 in zip(res[f'{ld}_t1'], res[f'{ld}_t2'])]) for ld in ('quiet', 'busy')},
           'command': 'python benchmarks/train_threads.py' + ('' if (a.rounds, a.iters, a.warmup) == (3, 60, 5) else f' --rounds {a.rounds} --iters {a.iters} --warmup {a.warmup}')}
    print(json.dumps({k: out[k] for k in ('seconds_per_iter', 'ratio_2_over_1')}, indent=1))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == '__main__': main()
