#!/usr/bin/env python
"""Training-step throughput: the restorekit Learner vs a minimal hand-written PyTorch loop doing the same work, same run.

Workload: EDSR-baseline x2 (`create_model('edsr_baseline', 2, seed=0)`), batch 16 of 96x96 HR crops of Silver patches
(48x48 LR after the seeded `realesrgan` x2 Gold degradation), L1 loss, AdamW (lr 2e-4, betas (0.9, 0.99), eps 1e-8,
decoupled wd 1e-4 on weights, none on biases, as fastai's `wd_bn_bias=False`) and a per-iteration cosine schedule.
Silver: a store cut (128 px patches, at most 16 per image) from Kodak24 (shared data) or the scikit-image photos,
one photo held out for the learner's validation image.

Arms, each trained for `warmup + iters` iterations per round on its own model (same init):
  learner_plain  `restoration_learner(..., grad_clip=None, ema=None)` + `fit_iters`
  loop_plain     python for-loop: next HR batch, `hr.to(device)`, its keyed Gold plan and `Degrader.apply` (what the
                 learner's loader and GoldCallback do with 0 workers), forward, `F.l1_loss`, backward,
                 `torch.optim.AdamW.step()` (torch's default implementation for the device), `zero_grad()`
  learner_full   `restoration_learner` defaults: gradient clipping 1.0 and an EMA (0.999) of the weights
  loop_full      loop_plain + `clip_grad_norm_(params, 1.0)` + an EMA lerp of the state dict after each step
The loops draw batches from a plain `torch.utils.data.DataLoader` over the same `TrainPatches` dataset and a
`PatchSampler` with the learner's seed and pass length; at the start of each round every arm's sampler is set to the
same pass and every arm's Degrader to the same seed (the Gold plans are keyed by the batch's crop seeds), so all four arms train on identical (LR, HR) batches
(checked: the LR batch of each arm's first iteration is compared). The learner arms include everything fastai does
per iteration (its DataLoader, callbacks, recorder, metrics, progress bar unless `--no-bar`); the per-fit set-up
and the end-of-fit validation (one 96x96 image) are outside the timed window and reported separately.
Timing: the first `warmup` iterations of each fit are excluded; the window runs from the end of iteration `warmup`
to the end of the last one (device synchronised at both ends only, so asynchronous CUDA work may overlap as it
would in training). Arms are interleaved per round (order alternates between rounds). Reported: median
per-iteration seconds and iterations/s per arm, overhead = learner/loop - 1 as the median over rounds of the paired
ratios (goal <= 5 %).
Gold share (goal <= 10 %): (a) isolated: per round, the timed batches are degraded again by a Degrader in the same
random state, synchronised around each call; its mean time / that round's full-learner step time, median over rounds;
(b) in step: after the rounds, one instrumented fit of the full learner with synchronised timers around the
GoldCallback's degrader call, Gold time / step time within that fit.
Writes benchmarks/results/train_step.json (train_step_<device>[_bf16].json off the CPU; a `_<preset>` suffix when
--degrade is not realesrgan).

Usage: python benchmarks/train_step.py [--device cpu|cuda] [--rounds 5] [--iters 3|50] [--warmup 1|10]
                                       [--precision fp32|bf16] [--no-bar] [--threads N] [--degrade realesrgan]
"""
import argparse, contextlib, io, json, math, os, platform, shutil, statistics, tempfile, time, warnings
from pathlib import Path

warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)

import cv2
import torch
import torch.nn.functional as F

from restorekit.core import load_image, sample_images, shared_data
from restorekit.silver import build_silver, SilverStore
from restorekit.degrade import Degrader, preset
from restorekit.learner import restoration_dls, restoration_learner, PatchSampler, TrainPatches
from restorekit.losses import RestorationLoss
from restorekit.models import create_model, param_count
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback

RESULTS = Path(__file__).resolve().parent/'results'
LR, WD, BETAS, EPS, ETA_MIN, CLIP, EMA = 2e-4, 1e-4, (0.9, 0.99), 1e-8, 1e-7, 1.0, 0.999


def sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()


def silver_source():
    "Training files, one held-out validation file, and the source's name."
    data = shared_data()
    if data and (data/'Kodak24').is_dir():
        files, name = sorted((data/'Kodak24').glob('*.png')), 'Kodak24 (shared data)'
    else: files, name = sample_images(), 'scikit-image sample photos'
    return files[:-1], files[-1], name


class Clock(Callback):
    "Synchronised timestamps at the end of training iteration `start` and of iteration `end`; checksum of the first LR batch."
    order, run_valid = 1000, False      # after every other callback's after_batch
    def __init__(self, start, end, dev): self.start, self.end, self.dev, self.t0, self.t1, self.first = start, end, dev, None, None, None
    def before_fit(self): self.t_fit = time.perf_counter()
    def after_pred(self):
        if self.first is None: self.first = self.xb[0].double().sum().item()   # warm-up iteration: not timed
    def after_batch(self):
        n = self.train_iter                                                    # iterations done (TrainEvalCallback ran first)
        if n == self.start: sync(self.dev); self.t0 = time.perf_counter()
        if n == self.end: sync(self.dev); self.t1 = time.perf_counter()
    def after_fit(self): self.t_fit = time.perf_counter() - self.t_fit


class TimedDegrader:
    "Wraps a Degrader: synchronised wall time of each call, for the in-step Gold share."
    def __init__(self, deg, dev): self.deg, self.dev, self.times = deg, dev, []
    def __getattr__(self, k): return getattr(self.deg, k)
    def _timed(self, fn, *a, **kw):
        sync(self.dev); t0 = time.perf_counter()
        out = fn(*a, **kw)
        sync(self.dev); self.times.append(time.perf_counter() - t0)
        return out
    def __call__(self, hr, **kw): return self._timed(self.deg, hr, **kw)
    def apply(self, hr, plan, **kw): return self._timed(self.deg.apply, hr, plan, **kw)   # the loader drew the plan


def cosine(i, n, lr):
    "The learner's schedule without warm-up: cosine from `lr` at iteration 0 to ETA_MIN at iteration n-1."
    p = min(1.0, i / max(1, n - 1))
    return ETA_MIN + (lr - ETA_MIN) * (1 + math.cos(math.pi * p)) / 2


class Loop:
    "The minimal hand-written PyTorch training loop."
    def __init__(self, silver, patch, bs, n, cfg, dev, clip, ema, amp, seed=0):
        self.dev, self.clip, self.amp, self.n = dev, clip, amp, n
        self.sampler = PatchSampler(len(silver), n * bs, seed)              # same draws as the learner's sampler
        self.dl = torch.utils.data.DataLoader(TrainPatches(silver, patch), batch_size=bs, sampler=self.sampler,
                                              drop_last=True, num_workers=0, pin_memory=dev.type == 'cuda')
        self.deg = Degrader(cfg, seed)
        self.model = create_model('edsr_baseline', cfg.scale, seed=seed).to(dev)
        ps = [p for p in self.model.parameters() if p.requires_grad]
        self.params = ps
        self.opt = torch.optim.AdamW([{'params': [p for p in ps if p.ndim > 1], 'weight_decay': WD},
                                      {'params': [p for p in ps if p.ndim <= 1], 'weight_decay': 0.}],
                                     lr=LR, betas=BETAS, eps=EPS)
        self.ema = {k: v.detach().clone() for k, v in self.model.state_dict().items()} if ema else None
        self.n_ema = 0

    def run(self, start):
        "Train `n` iterations; seconds from the end of iteration `start` to the end of the last, and the first LR checksum."
        dev, model, opt = self.dev, self.model, self.opt
        first = t0 = None
        keys = self.sampler.draw(self.sampler.epoch)          # the pass the DataLoader is about to draw
        bs = self.dl.batch_size
        for i, (hr,) in enumerate(self.dl):
            for g in opt.param_groups: g['lr'] = cosine(i, self.n, LR)
            plan = self.deg.plan(bs, *hr.shape[-2:], key=[s for _, s in keys[i * bs:(i + 1) * bs]])   # as the learner's loader does
            lq, hq = self.deg.apply(hr.to(dev, non_blocking=True), plan)
            if first is None: first = lq.double().sum().item()              # warm-up iteration: not timed
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.amp):
                pred = model(lq)
            loss = F.l1_loss(pred.float(), hq)
            loss.backward()
            if self.clip: torch.nn.utils.clip_grad_norm_(self.params, CLIP)
            opt.step()
            opt.zero_grad()
            if self.ema is not None:
                with torch.no_grad():
                    d = min(EMA, (1 + self.n_ema) / (10 + self.n_ema))   # the EMACallback's warm-up rule
                    for k, v in model.state_dict().items():
                        if v.dtype.is_floating_point: self.ema[k].lerp_(v, 1 - d)
                        else: self.ema[k].copy_(v)
                    self.n_ema += 1
            if i + 1 == start: sync(dev); t0 = time.perf_counter()
        sync(dev)
        return time.perf_counter() - t0, first


def main(device='cpu', rounds=5, iters=None, warmup=None, batch=16, patch=96, scale=2, precision='fp32', bar=True,
         threads=None, seed=0, degrade='realesrgan'):
    dev = torch.device(device)
    if precision not in ('fp32', 'bf16'): raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    if precision == 'bf16' and dev.type != 'cuda': raise ValueError("--precision bf16 needs --device cuda")
    cuda = dev.type == 'cuda'
    iters, warmup = iters or (50 if cuda else 3), warmup or (10 if cuda else 1)
    if warmup < 1 or iters < 1 or rounds < 1: raise ValueError("warmup, iters and rounds must be >= 1")
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads); cv2.setNumThreads(threads)
    n = warmup + iters
    amp = precision == 'bf16'
    cfg = preset(degrade, scale=scale)
    files, vfile, src_name = silver_source()
    work = Path(tempfile.mkdtemp(prefix='rk-bench-train-'))
    try:
        rep = build_silver(files, work/'silver', patch=128, max_per_image=16, n_workers=0, verbose=False)
        silver = SilverStore(work/'silver')
        vimg = load_image(vfile)
        vh, vw = vimg.shape[-2:]
        valid = [vimg[:, (vh - patch) // 2:(vh - patch) // 2 + patch, (vw - patch) // 2:(vw - patch) // 2 + patch]]

        def make_learner(full):
            dls = restoration_dls(silver, valid, bs=batch, patch=patch, scale=scale, degrade=cfg, epoch_len=n,
                                  device=dev, seed=seed)
            kw = {} if full else dict(grad_clip=None, ema=None)
            learn = restoration_learner(dls, 'edsr_baseline', loss=RestorationLoss(l1=1, ms_ssim=0, lpips=0), metrics=[],
                                        lr=LR, wd=WD, seed=seed, mixed_precision=precision if amp else None, **kw)
            if not bar: learn.remove_cb(ProgressCallback)
            return learn

        learners = {'plain': make_learner(False), 'full': make_learner(True)}
        loops = {'plain': Loop(silver, patch, batch, n, cfg, dev, clip=False, ema=False, amp=amp, seed=seed),
                 'full': Loop(silver, patch, batch, n, cfg, dev, clip=True, ema=True, amp=amp, seed=seed)}
        n_params = param_count(loops['plain'].model)

        def reset(sampler, deg, r):
            "Round r: every arm draws the same pass and degrades with the same random state."
            sampler.epoch = r
            deg.load_state_dict(Degrader(cfg, seed=1000 + r).state_dict())

        def run_learner(kind, r, extra=()):
            learn = learners[kind]
            reset(learn.dls.sampler, learn.dls.gold_cb.degrader, r)
            clock = Clock(warmup, n, dev)
            with contextlib.redirect_stdout(io.StringIO()): learn.fit_iters(n, cbs=[clock, *extra])
            return (clock.t1 - clock.t0) / iters, clock.first, clock.t_fit

        def run_loop(kind, r):
            lp = loops[kind]
            reset(lp.sampler, lp.deg, r)
            t, first = lp.run(warmup)
            return t / iters, first

        def gold_isolated(r):
            "Mean synchronised seconds of the Degrader on the round's timed HR batches (same random state as the arms)."
            sampler = PatchSampler(len(silver), n * batch, seed); deg = Degrader(cfg, seed)
            reset(sampler, deg, r)
            dl = torch.utils.data.DataLoader(TrainPatches(silver, patch), batch_size=batch, sampler=sampler, drop_last=True)
            ts, keys = [], sampler.draw(sampler.epoch)
            for i, (hr,) in enumerate(dl):
                hr = hr.to(dev)
                sync(dev); t0 = time.perf_counter()
                deg.apply(hr, deg.plan(batch, patch, patch, key=[s for _, s in keys[i * batch:(i + 1) * batch]])); sync(dev)
                if i >= warmup: ts.append(time.perf_counter() - t0)
            return statistics.mean(ts)

        arms = ('learner_plain', 'loop_plain', 'learner_full', 'loop_full')
        per = {a: [] for a in arms}; fit_s = {'learner_plain': [], 'learner_full': []}; gold = []; same = True
        print(f"{src_name}: {len(silver)} Silver patches; EDSR-baseline x{scale}, {n_params} params; batch {batch} "
              f"{patch}->{patch // scale} px; {rounds} rounds x ({warmup} warm-up + {iters} timed) its; {dev}, {precision}, "
              f"{torch.get_num_threads()} threads")
        for r in range(rounds):
            firsts = {}
            order = [('plain', 'learner'), ('plain', 'loop'), ('full', 'learner'), ('full', 'loop')]
            if r % 2: order = [(k, 'loop' if w == 'learner' else 'learner') for k, w in order]
            for kind, who in order:
                arm = f'{who}_{kind}'
                if who == 'learner':
                    t, firsts[arm], tf = run_learner(kind, r); fit_s[arm].append(tf)
                else: t, firsts[arm] = run_loop(kind, r)
                per[arm].append(t)
            gold.append(gold_isolated(r))
            ref = firsts['loop_plain']
            same &= all(abs(v - ref) <= 1e-6 * max(1.0, abs(ref)) for v in firsts.values())
            print(f"round {r}: " + ', '.join(f"{a} {per[a][-1]:.3f}s" for a in arms) + f", gold {gold[-1]:.3f}s"
                  + ('' if same else '  (batches differ!)'))

        # in-step Gold share: one instrumented fit of the full learner
        learn = learners['full']; gcb = learn.dls.gold_cb
        timed = TimedDegrader(gcb.degrader, dev); gcb.degrader = timed
        try: step_instr, _, _ = run_learner('full', rounds)
        finally: gcb.degrader = timed.deg
        gold_instr = statistics.mean(timed.times[warmup:])

        med = {a: statistics.median(per[a]) for a in arms}
        res = dict(benchmark='training step: restorekit Learner vs minimal PyTorch loop', device=str(dev),
                   precision=precision, model='edsr_baseline', scale=scale, params=n_params, batch=batch,
                   hr_patch=patch, lr_patch=patch // scale, degrade=degrade, loss='L1',
                   optimizer=dict(lr=LR, betas=BETAS, eps=EPS, wd=WD, schedule='per-iteration cosine', eta_min=ETA_MIN,
                                  learner='fastai Adam(decouple_wd=True)', loop=f'torch.optim.AdamW (default implementation)'),
                   silver=dict(source=src_name, store_patch=128, max_per_image=16, patches=len(silver),
                               images=rep['n_ok'], validation_image=vfile.name),
                   loop_data='plain torch DataLoader over restorekit TrainPatches + PatchSampler (same seed and pass as the learner)',
                   progress_bar=bar, rounds=rounds, warmup_iters=warmup, timed_iters=iters, same_batches_all_arms=same,
                   arms={a: dict(s_per_iter=round(med[a], 4), iters_per_s=round(1 / med[a], 3),
                                 s_per_iter_all=[round(t, 4) for t in per[a]]) for a in arms},
                   learner_fit_seconds_incl_setup_and_validation={a: round(statistics.median(v), 3) for a, v in fit_s.items()})
        res['overhead'] = {}
        for kind in ('plain', 'full'):
            ratios = [l / p - 1 for l, p in zip(per[f'learner_{kind}'], per[f'loop_{kind}'])]
            o = statistics.median(ratios)
            res['overhead'][kind] = dict(learner_over_loop_minus_1=round(o, 4), per_round=[round(x, 4) for x in ratios],
                                         goal_at_most=0.05, met=o <= 0.05)
        g = statistics.median(gold)
        share_full = [x / l for x, l in zip(gold, per['learner_full'])]
        share_plain = [x / l for x, l in zip(gold, per['learner_plain'])]
        sf = statistics.median(share_full)
        res['gold_share'] = dict(
            method='(a) isolated: per round, mean synchronised Degrader time on the timed HR batches / that round\'s '
                   'learner step time, median over rounds; '
                   '(b) in_step: synchronised timers around the GoldCallback degrader call in one extra fit of the full '
                   'learner, mean Gold time / step time of that fit',
            gold_s_per_batch=round(g, 4), gold_s_per_batch_all=[round(x, 4) for x in gold],
            share_of_learner_full_step=round(sf, 4), share_of_learner_full_step_per_round=[round(x, 4) for x in share_full],
            share_of_learner_plain_step=round(statistics.median(share_plain), 4),
            in_step=dict(gold_s=round(gold_instr, 4), step_s=round(step_instr, 4), share=round(gold_instr / step_instr, 4)),
            goal_at_most=0.10, met=sf <= 0.10)
        res['machine'] = dict(cpus=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                              python=platform.python_version(), platform=platform.platform(),
                              gpu=torch.cuda.get_device_name() if dev.type == 'cuda' else None)
        for kind in ('plain', 'full'):
            o = res['overhead'][kind]
            print(f"{kind}: learner {1 / med[f'learner_{kind}']:.3f} it/s, loop {1 / med[f'loop_{kind}']:.3f} it/s, "
                  f"overhead {o['learner_over_loop_minus_1']:+.1%} (goal <= 5%: {'met' if o['met'] else 'NOT met'})")
        gs = res['gold_share']
        print(f"Gold share of the learner step: {gs['share_of_learner_full_step']:.1%} isolated, "
              f"{gs['in_step']['share']:.1%} in step (goal <= 10%: {'met' if gs['met'] else 'NOT met'})")
        name = ('train_step' if dev.type == 'cpu' else f'train_step_{dev.type}' + ('_bf16' if amp else '')
                + ('' if degrade == 'realesrgan' else f'_{degrade}'))
        out = RESULTS/f'{name}.json'
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1) + '\n')
        print(f"wrote {out}")
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cpu'); ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--iters', type=int, default=None, help='timed iterations per fit (default 3 on CPU, 50 on CUDA)')
    ap.add_argument('--warmup', type=int, default=None, help='untimed iterations per fit (default 1 on CPU, 10 on CUDA)')
    ap.add_argument('--batch', type=int, default=16); ap.add_argument('--patch', type=int, default=96)
    ap.add_argument('--scale', type=int, default=2); ap.add_argument('--precision', default='fp32', choices=('fp32', 'bf16'))
    ap.add_argument('--no-bar', dest='bar', action='store_false', help="remove fastai's ProgressCallback from the learners")
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--degrade', default='realesrgan', help='Gold preset (the goal is stated for realesrgan)')
    main(**vars(ap.parse_args()))
