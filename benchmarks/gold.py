#!/usr/bin/env python
"""Where the Gold stage runs: training-step throughput with it in the step or in DataLoader workers, the Gold stage
alone per JPEG codec, and the CPU no-regression check of `Degrader.__call__` against an earlier revision — all paired,
in one run.

Workload (as benchmarks/train_step.py): EDSR-baseline x2, batch 16 of 96x96 HR crops (48x48 LR) of Silver patches,
`realesrgan` x2, L1, `restoration_learner` defaults (AdamW, cosine, clipping 1.0, EMA 0.999), no progress bar.
Silver: 128 px patches (at most 16 per image) of Kodak24 (shared data) or the scikit-image photos.

Step arms, each a fit of `warmup + iters` iterations on its own learner (same init, same seed, so the same batches):
  pairs        the learner on pre-made `(lq, hq)` pairs (GoldCallback removed): the step with no Gold work, the floor
  device_w0    gold_on='device', num_workers=0: plan drawn in the main process, pixels in the step
  device_wN    gold_on='device', num_workers=N: plans drawn in the workers, pixels in the step
  workers_wN   gold_on='workers', num_workers=N: the whole Gold stage in the workers, on their CPUs
Timed window: from the end of iteration `warmup` to the end of the last (device synchronised at both ends). Arms are
interleaved per round, order reversed on odd rounds. Reported: median s/iteration per arm, and each arm's ratio to
`pairs` (median of the per-round ratios): `ratio - 1` is what the Gold stage adds to a step where it runs.
Gold alone: `Degrader.apply` on the timed batches on the device, per JPEG codec ('host', 'device'), synchronised.
No regression (CPU): `Degrader(cfg, seed=i)(hr)` for 16x3x256x256 Kodak24 crops with this code and with the package
at `--base` (extracted with `git archive` into a temporary package), interleaved, the same seeds; the outputs are
compared bit for bit and the time ratio is the median over repeats.
Writes benchmarks/results/gold.json (gold_<device>.json off the CPU).

Usage: python benchmarks/gold.py [--device cpu|cuda] [--workers 2] [--rounds 3] [--iters 3] [--warmup 1]
                                 [--base HEAD~1] [--repeats 10]
"""
import argparse, contextlib, importlib, io, json, os, platform, shutil, statistics, subprocess, sys, tempfile, time, warnings
from pathlib import Path

warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)

import cv2
import torch

from restorekit.core import load_image
from restorekit.degrade import Degrader, preset
from restorekit.gold import GoldCallback, PairedDataset
from restorekit.learner import restoration_dls, restoration_learner
from restorekit.losses import RestorationLoss
from restorekit.silver import build_silver, SilverStore
from fastai.callback.progress import ProgressCallback
from fastai.data.load import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import Clock, silver_source, sync            # the same clock and data as the train-step benchmark
from degrade import crops

RESULTS = Path(__file__).resolve().parent/'results'
ROOT = Path(__file__).resolve().parent.parent


def base_package(rev:str, work:Path):
    "The restorekit package at git revision `rev`, importable as `restorekit_base`."
    dest = work/'base'; dest.mkdir()
    tar = subprocess.run(['git', '-C', str(ROOT), 'archive', rev, 'restorekit'], check=True, capture_output=True).stdout
    subprocess.run(['tar', '-x', '-C', str(dest)], input=tar, check=True)
    (dest/'restorekit').rename(dest/'restorekit_base')
    sys.path.insert(0, str(dest))
    return importlib.import_module('restorekit_base.degrade')


def no_regression(base_rev, repeats, work):
    "Paired CPU timings of `Degrader.__call__`, this code vs `base_rev`, same seeds; are the outputs identical?"
    old = base_package(base_rev, work)
    hr, src = crops(16, 256)
    cfg_new, cfg_old = preset('realesrgan', scale=4), old.preset('realesrgan', scale=4)
    ts = {'new': [], 'base': []}; identical = True
    for i in range(repeats + 2):
        order = [('new', Degrader, cfg_new), ('base', old.Degrader, cfg_old)][::(1 if i % 2 else -1)]
        outs = {}
        for name, D, cfg in order:
            t0 = time.perf_counter(); outs[name] = D(cfg, seed=i)(hr)[0]; t = time.perf_counter() - t0
            if i >= 2: ts[name].append(t)
        identical &= torch.equal(outs['new'], outs['base'])
    ratios = [n / b for n, b in zip(ts['new'], ts['base'])]
    return dict(what="Degrader(realesrgan x4, seed=i)(16x3x256x256) on the CPU, this code vs --base, interleaved",
                source=src, base=base_rev, repeats=repeats, identical_outputs=identical,
                ms_new=round(statistics.median(ts['new']) * 1e3, 1), ms_base=round(statistics.median(ts['base']) * 1e3, 1),
                time_ratio_new_over_base=round(statistics.median(ratios), 3), ratios=[round(r, 3) for r in ratios])


def main(device='cpu', workers=2, rounds=3, iters=3, warmup=1, batch=16, patch=96, scale=2, base='HEAD~1', repeats=10, seed=0):
    dev = torch.device(device)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads); cv2.setNumThreads(threads)
    n = warmup + iters
    cfg = preset('realesrgan', scale=scale)
    files, vfile, src_name = silver_source()
    work = Path(tempfile.mkdtemp(prefix='rk-bench-gold-'))
    try:
        build_silver(files, work/'silver', patch=128, max_per_image=16, n_workers=0, verbose=False)
        silver = SilverStore(work/'silver')
        vimg = load_image(vfile); vh, vw = vimg.shape[-2:]
        valid = [vimg[:, (vh - patch) // 2:(vh - patch) // 2 + patch, (vw - patch) // 2:(vw - patch) // 2 + patch]]
        arms = {'pairs': dict(gold_on=None, num_workers=0), 'device_w0': dict(gold_on='device', num_workers=0),
                f'device_w{workers}': dict(gold_on='device', num_workers=workers),
                f'workers_w{workers}': dict(gold_on='workers', num_workers=workers)}

        def make(kw):
            kw = {**kw, 'gold_on': kw['gold_on'] or 'device'}   # the floor's loader makes the pairs once, below
            dls = restoration_dls(silver, valid, bs=batch, patch=patch, scale=scale, degrade=cfg, epoch_len=n, device=dev, seed=seed, **kw)
            learn = restoration_learner(dls, 'edsr_baseline', loss=RestorationLoss(l1=1, ms_ssim=0, lpips=0), metrics=[], lr=2e-4, seed=seed)
            learn.remove_cb(ProgressCallback)
            return learn
        learners = {a: make(kw) for a, kw in arms.items()}
        # the floor: the same batches, degraded beforehand
        ref = learners['pairs']
        pairs = []
        for b in ref.dls.train:
            plan = ref.dls.train.gold_plan
            lq, hq = ref.dls.gold_cb.degrader.apply(b[0], plan.samples)
            pairs += list(zip(lq.cpu(), hq.cpu()))
        ref.dls.train = DataLoader(PairedDataset(pairs), bs=batch, device=dev, drop_last=True)
        ref.remove_cb(GoldCallback)

        def run(arm, r):
            learn = learners[arm]
            if arm != 'pairs': learn.dls.sampler.epoch = 0          # every round and arm: the same pass
            clock = Clock(warmup, n, dev)
            with contextlib.redirect_stdout(io.StringIO()): learn.fit_iters(n, cbs=[clock])
            return (clock.t1 - clock.t0) / iters, clock.first

        per = {a: [] for a in arms}; same = True
        print(f"{src_name}: {len(silver)} Silver patches; EDSR-baseline x{scale}, batch {batch} {patch}->{patch // scale} px; "
              f"{rounds} rounds x ({warmup}+{iters}) its; {dev}, {threads} threads, {workers} workers")
        for r in range(rounds):
            firsts = {}
            for a in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
                t, firsts[a] = run(a, r); per[a].append(t)
            same &= all(abs(v - firsts['pairs']) <= 1e-6 * max(1.0, abs(firsts['pairs'])) for v in firsts.values())
            print(f"round {r}: " + ', '.join(f"{a} {per[a][-1]:.3f}s" for a in arms) + ('' if same else '  (batches differ!)'))

        # the Gold stage alone on the device, per JPEG codec
        dls = learners['device_w0'].dls
        batches = []
        for b in dls.train: batches.append((b[0], dls.train.gold_plan))
        alone = {}
        for codec in ('host', 'device'):
            deg = Degrader(cfg, seed=seed, jpeg_codec=codec)
            ts = []
            for i, (hr, plan) in enumerate(batches * 2):
                sync(dev); t0 = time.perf_counter(); deg.apply(hr, plan.samples); sync(dev)
                if i >= warmup: ts.append(time.perf_counter() - t0)
            alone[codec] = round(statistics.median(ts), 4)

        med = {a: statistics.median(v) for a, v in per.items()}
        res = dict(benchmark='Gold placement: step throughput with the Gold stage in the step or in DataLoader workers',
                   device=str(dev), model='edsr_baseline', scale=scale, batch=batch, hr_patch=patch, degrade='realesrgan',
                   silver=src_name, rounds=rounds, warmup_iters=warmup, timed_iters=iters, workers=workers, same_batches_all_arms=same,
                   arms={a: dict(**arms[a], s_per_iter=round(med[a], 4), iters_per_s=round(1 / med[a], 3),
                                 s_per_iter_all=[round(t, 4) for t in per[a]],
                                 ratio_to_pairs=round(statistics.median([t / p for t, p in zip(per[a], per['pairs'])]), 3))
                         for a in arms},
                   gold_alone_s_per_batch=alone)
        if dev.type == 'cpu': res['no_regression'] = no_regression(base, repeats, work)
        res['machine'] = dict(cpus=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                              python=platform.python_version(), platform=platform.platform(),
                              gpu=torch.cuda.get_device_name() if dev.type == 'cuda' else None)
        for a in arms: print(f"{a:12s} {1 / med[a]:.3f} it/s, x{res['arms'][a]['ratio_to_pairs']:.3f} of the step on pre-made pairs")
        print('Gold alone (s/batch): ' + ', '.join(f'{k} codec {v:.4f}' for k, v in alone.items()))
        if 'no_regression' in res:
            nr = res['no_regression']
            print(f"no regression: this code / {base} = {nr['time_ratio_new_over_base']:.3f} "
                  f"({nr['ms_new']} vs {nr['ms_base']} ms), identical outputs: {nr['identical_outputs']}")
        out = RESULTS/('gold.json' if dev.type == 'cpu' else f'gold_{dev.type}.json')
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1) + '\n')
        print(f"wrote {out}")
        return res
    finally: shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cpu'); ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--rounds', type=int, default=3); ap.add_argument('--iters', type=int, default=3)
    ap.add_argument('--warmup', type=int, default=1); ap.add_argument('--base', default='HEAD~1',
                    help='git revision of the no-regression baseline (CPU only)')
    ap.add_argument('--repeats', type=int, default=10)
    main(**vars(ap.parse_args()))
