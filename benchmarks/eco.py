#!/usr/bin/env python
"""ECO's cost: per-iteration overhead of the `ECO` callback over vanilla training on the same batches, the on-the-fly
teacher's cost, and `build_centroids` throughput.

Workload: the ECO experiment's student (EDSR-baseline 32 ch x 4 blocks, x2, batch 16 of 64 px crops, bicubic, L1, no
EMA) on Silver patches of ../shared/data/Kodak24 (96 px), teacher the official IMDN x2. Arms, interleaved per round
(order alternating) on the same DataLoaders seed, so every arm sees the same batches:
  vanilla   : no ECO
  eco_store : ECO('sigmoid') reading the precomputed centroids (`restoration_dls(..., paired=CentroidStore)`)
  eco_fly   : ECO('sigmoid', teacher=IMDN): the teacher runs in `before_batch` under no_grad
Only training iterations are timed (a callback stamps each batch's end; the first `--warmup` are dropped).
Reported: median seconds per iteration per arm, the paired ratios eco/vanilla (medians over rounds), the teacher's
share of an on-the-fly iteration, and build_centroids' patches/s (median of `--rounds` fresh builds of the store).
Writes benchmarks/results/eco.json. Needs ../shared/data; skips otherwise.

Usage: python benchmarks/eco.py [--rounds 3] [--iters 40] [--warmup 5] [--threads 2]
"""
import argparse, json, platform, statistics, tempfile, time, warnings
from pathlib import Path

warnings.filterwarnings('ignore')
import torch

from restorekit.core import shared_data
from restorekit.eco import ECO, CentroidStore, build_centroids
from restorekit.learner import restoration_dls, restoration_learner
from restorekit.losses import RestorationLoss
from restorekit.models import load_trained
from restorekit.silver import SilverStore, build_silver
from fastai.callback.core import Callback


class Stamp(Callback):
    order, run_valid = 99, False
    def before_fit(self): self.t = [time.perf_counter()]
    def after_batch(self): self.t.append(time.perf_counter())


def per_iter(arm, silver, cents, teacher, valid, a):
    dls = restoration_dls(silver, valid, bs=16, patch=64, scale=2, degrade='bicubic', epoch_len=a.iters, seed=0, device='cpu',
                          valid_crop=64, paired=cents if arm == 'eco_store' else None)
    cbs = {'vanilla': [], 'eco_store': [ECO('sigmoid')], 'eco_fly': [ECO('sigmoid', teacher=teacher)]}[arm]
    st = Stamp()
    learn = restoration_learner(dls, 'edsr_baseline', loss=RestorationLoss(l1=1, ms_ssim=0, lpips=0), metrics=[], lr=1e-3, ema=None,
                                model_kw=dict(n_feats=32, n_blocks=4), cbs=cbs + [st])
    learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == 'ProgressCallback']); learn.logger = lambda *x, **k: None
    learn.fit(1)
    dt = [b - a_ for a_, b in zip(st.t, st.t[1:])][a.warmup:]
    teach = cbs[0].teacher_seconds / a.iters if arm == 'eco_fly' else None
    return statistics.median(dt), teach


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rounds', type=int, default=3); ap.add_argument('--iters', type=int, default=40)
    ap.add_argument('--warmup', type=int, default=5); ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'eco.json'))
    a = ap.parse_args()
    sd = shared_data()
    if sd is None or not (sd / 'Kodak24').is_dir(): print('benchmarks/eco.py: needs ../shared/data: skipped'); return
    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix='eco-bench-'))
    build_silver(sd / 'Kodak24', work / 'silver', patch=96, max_per_image=10, verbose=False)
    silver = SilverStore(work / 'silver')
    teacher = load_trained(sd / 'weights_IMDN' / 'IMDN_x2.pth', 'imdn', 2)
    builds = []
    for r in range(a.rounds):
        rep = build_centroids(teacher, silver, work / f'cent{r}', 2, bs=16, verbose=False)
        builds.append(rep['patches_per_s'])
    cents = CentroidStore(work / 'cent0', silver)
    valid = [sd / 'Set5' / 'HR' / 'baby.png']
    arms = ['vanilla', 'eco_store', 'eco_fly']
    res = {a_: [] for a_ in arms}; teach = []
    for r in range(a.rounds):
        for arm in (arms if r % 2 == 0 else arms[::-1]):
            t, th = per_iter(arm, silver, cents, teacher, valid, a)
            res[arm].append(t)
            if th is not None: teach.append(th)
            print(f"round {r} {arm:9s}: {t * 1000:.1f} ms/iter", flush=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    ratio = {k: statistics.median([x / y for x, y in zip(res[k], res['vanilla'])]) for k in ('eco_store', 'eco_fly')}
    out = {'workload': 'EDSR-baseline 32x4, x2 bicubic, batch 16 of 64 px, L1, CPU', 'threads': a.threads, 'rounds': a.rounds,
           'iters': a.iters, 'warmup': a.warmup, 'hardware': platform.processor() or platform.machine(), 'torch': torch.__version__,
           'seconds_per_iter_median': med, 'ratio_vs_vanilla_median': ratio,
           'overhead_store_pct': round(100 * (ratio['eco_store'] - 1), 2),
           'teacher_seconds_per_iter_median': statistics.median(teach),
           'teacher_share_of_fly_iter': statistics.median(teach) / med['eco_fly'],
           'build_centroids_patches_per_s': {'median': statistics.median(builds), 'rounds': builds, 'patches': len(silver), 'patch_px': 96},
           'command': 'python benchmarks/eco.py'}
    Path(a.out).write_text(json.dumps(out, indent=1)); print(json.dumps(out, indent=1))


if __name__ == '__main__': main()
