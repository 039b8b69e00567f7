"""ECO (Lee & Heo, AAAI 2024) reproduced at CPU scale: do the paper's claims hold here?

Setup (every arm sees the same patches, crops, flips and batches for a given seed: a paired design):
  Silver  : patches of ../shared/data/Kodak24 (24 lossless photos)
  teacher : the official IMDN x2 (../shared/data/weights_IMDN/IMDN_x2.pth), frozen; centroids precomputed (8-bit)
  student : EDSR-baseline narrowed for 2 CPU cores (n_feats=32, n_blocks=4; the paper's has 64 and 16), from scratch
  task    : x2, MATLAB bicubic (8-bit), L1, Adam (AdamW wd 1e-4), cosine schedule, no EMA (as the paper), batch 16
  scoring : Set5 and Set14, whole images (mod-2), PSNR/SSIM on Y with a 2-pixel border, every `--every` iterations
Arms: vanilla, KD (target teacher(x), input x), ECO w/o mixup ('none'), ECO linear, ECO sigmoid (the reference code's).
Also: batch-size robustness (vanilla vs ECO w/o mixup at bs 2/4/8/16, paper Fig. 4), the optimisation landscape along
the gradient (Santurkar et al. 2018; paper Fig. 2), and real-world x2 (sigma=0.01 colour noise on the LR) and Gold
('light' degradation) ECO vs vanilla. Statistics: mean and 95 % t-interval over seeds, paired differences vs vanilla.

    python experiments/eco.py                 # the full CPU configuration (results/eco.json + results/eco_*.png)
    python experiments/eco.py --smoke         # a few iterations per arm: checks the machinery, writes nothing
The paper's Table 1 (EDSR x2, DIV2K, 125k iterations at batch 128): Set5 38.18 -> 38.29, Set14 33.82 -> 34.07 dB
is quoted as the published reference only; nothing here is comparable to it in scale.
"""
from __future__ import annotations
import argparse, json, math, platform, statistics, sys, tempfile, time, warnings
from pathlib import Path

import numpy as np
import torch

from restorekit.core import load_image, shared_data
from restorekit.degrade import preset
from restorekit.gold import gold_validation_set
from restorekit.silver import build_silver, SilverStore
from restorekit.eco import ECO, KD, LRNoise, CentroidStore, build_centroids, bicubic_down
from restorekit.learner import restoration_dls, restoration_learner
from restorekit.losses import RestorationLoss
from restorekit.metrics import psnr, ssim
from restorekit.models import load_trained

with warnings.catch_warnings():
    warnings.filterwarnings('ignore', category=FutureWarning)
    from fastai.callback.core import Callback

PUBLISHED = {'source': 'Lee & Heo, AAAI 2024, Table 1 (EDSR x2, DIV2K, 125k iterations, batch 128)',
             'vanilla': {'Set5': 38.18, 'Set14': 33.82}, 'eco': {'Set5': 38.29, 'Set14': 34.07}}
ARMS = ('vanilla', 'kd', 'eco_none', 'eco_linear', 'eco_sigmoid')
STUDENT = dict(n_feats=32, n_blocks=4)


def eval_sets(shared: Path, noise: float | None = None, degrade: str | None = None) -> dict:
    """{'Set5': [(lr, hr)], 'Set14': [...]}: whole mod-2 HR images and their 8-bit bicubic LR — plus one fixed noise field
    per image (real-world), or instead degraded once with a seeded Gold preset (`degrade`)."""
    out, g = {}, torch.Generator().manual_seed(1234)
    for name in ('Set5', 'Set14'):
        hrs = []
        for p in sorted((shared / name / 'HR').glob('*.png')):
            hr = load_image(p)
            hrs.append(hr[:, :hr.shape[1] // 2 * 2, :hr.shape[2] // 2 * 2])
        if degrade:
            out[name] = [(lq, hq) for lq, hq in gold_validation_set(hrs, preset(degrade, scale=2), seed=1234).pairs]; continue
        pairs = []
        for hr in hrs:
            lr = bicubic_down(hr[None], 2)[0]
            if noise: lr = (lr + noise * torch.randn(lr.shape, generator=g)).clamp(0, 1)
            pairs.append((lr, hr))
        out[name] = pairs
    return out


def score(model, sets) -> dict:
    "Mean PSNR / SSIM (Y, border 2) per set."
    model.eval(); res = {}
    with torch.no_grad():
        for name, pairs in sets.items():
            ps, ss = [], []
            for lr, hr in pairs:
                dev = next(model.parameters()).device
                sr = model(lr[None].to(dev)).clamp(0, 1).cpu()
                ps.append(float(psnr(sr, hr[None], 2))); ss.append(float(ssim(sr, hr[None], 2)))
            res[name] = {'psnr': statistics.fmean(ps), 'ssim': statistics.fmean(ss)}
    model.train()
    return res


class Curve(Callback):
    "Score the model on the evaluation sets every `every` training iterations (and at the end)."
    order, run_valid = 90, False
    def __init__(self, sets, every): self.sets, self.every, self.points = sets, every, []
    def after_batch(self):
        it = self.learn.train_iter
        if it % self.every == 0 or it == self.n_total: self.points.append({'iter': it, **score(self.learn.model, self.sets)})
    def before_fit(self): self.n_total = self.learn.n_epoch * len(self.learn.dls.train)


class Landscape(Callback):
    """At the given iterations: loss and gradient at θ − η·g for a range of η on the current batch (Santurkar et al.):
    the spread of the losses (loss variation range) and the largest ‖∇L(θ−ηg) − ∇L(θ)‖₂ (gradient predictiveness)."""
    order, run_valid = 95, False
    def __init__(self, at, etas=(0.0, 1e-4, 5e-4, 1e-3, 2e-3, 4e-3)): self.at, self.etas, self.points = set(at), etas, []
    def after_backward(self):
        if self.learn.train_iter + 1 not in self.at: return
        m, params = self.learn.model, [p for p in self.learn.model.parameters() if p.grad is not None]
        g0 = [p.grad.detach().clone() for p in params]
        theta = [p.detach().clone() for p in params]
        losses, gdiff = [], []
        for eta in self.etas:
            with torch.no_grad():
                for p, t, g in zip(params, theta, g0): p.copy_(t - eta * g)
            m.zero_grad(set_to_none=True)
            loss = self.learn.loss_func(m(*self.learn.xb), *self.learn.yb)
            loss.backward()
            losses.append(float(loss))
            gdiff.append(float(torch.sqrt(sum(((p.grad - g) ** 2).sum() for p, g in zip(params, g0)))))
        with torch.no_grad():
            for p, t, g in zip(params, theta, g0): p.copy_(t); p.grad = g   # back to where the step was going to be taken
        self.points.append({'iter': self.learn.train_iter + 1, 'etas': list(self.etas), 'losses': losses,
                            'loss_range': max(losses) - min(losses), 'max_grad_diff': max(gdiff)})


def run_arm(arm, seed, silver, cents, sets, a) -> dict:
    "Train one arm from scratch; return its curve, wall time and (for the landscape arms) the landscape points."
    degrade = a.degrade_override or 'bicubic'
    dls = restoration_dls(silver, [sets['Set5'][0][1]], bs=a.bs, patch=a.patch, scale=2, degrade=degrade, epoch_len=a.n_iter,
                          seed=seed, device=a.device, valid_crop=64, paired=cents)
    cbs = {'vanilla': [], 'kd': [KD()], 'eco_none': [ECO('none')], 'eco_linear': [ECO('linear', span=a.span)],
           'eco_sigmoid': [ECO('sigmoid')]}[arm]
    if a.lr_noise: cbs = cbs + [LRNoise(a.lr_noise, seed=seed)]
    curve, land = Curve(sets, a.every), Landscape(a.landscape_at) if a.landscape_at else None
    learn = restoration_learner(dls, 'edsr_baseline', loss=RestorationLoss(l1=1, ms_ssim=0, lpips=0), metrics=[], lr=a.lr,
                                ema=None, seed=seed, model_kw=STUDENT, cbs=cbs + [curve] + ([land] if land else []))
    learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == 'ProgressCallback']); learn.logger = lambda *x, **k: None
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn.fit(1)
    return {'arm': arm, 'seed': seed, 'bs': a.bs, 'curve': curve.points, 'seconds': round(time.time() - t0, 1),
            'landscape': land.points if land else None}


def t_ci(xs) -> dict:
    "Mean and 95 % t-interval of `xs` (n >= 2; the half-width is None for one value)."
    n, m = len(xs), statistics.fmean(xs)
    if n < 2: return {'mean': m, 'ci95': None, 'n': n}
    from scipy import stats
    h = stats.t.ppf(0.975, n - 1) * statistics.stdev(xs) / math.sqrt(n)
    return {'mean': m, 'ci95': [m - h, m + h], 'n': n}


def summarise(runs, arms, sets=('Set5', 'Set14')) -> dict:
    "Per arm and set: PSNR/SSIM at 20 % of the run and at the end (mean, CI), and paired differences vs vanilla."
    out = {}
    by = {(r['arm'], r['seed']): r for r in runs}
    seeds = sorted({r['seed'] for r in runs})
    for arm in arms:
        out[arm] = {}
        for s in sets:
            for when in ('p20', 'end'):
                def at(r):
                    pts = r['curve']; target = pts[-1]['iter'] * (0.2 if when == 'p20' else 1)
                    return min(pts, key=lambda q: abs(q['iter'] - target))
                vals = [at(by[arm, sd])[s]['psnr'] for sd in seeds if (arm, sd) in by]
                ss = [at(by[arm, sd])[s]['ssim'] for sd in seeds if (arm, sd) in by]
                d = {'psnr': t_ci(vals), 'ssim': t_ci(ss), 'iter': at(by[arm, seeds[0]])['iter']}
                if arm != 'vanilla' and all(('vanilla', sd) in by for sd in seeds):
                    d['psnr_minus_vanilla'] = t_ci([at(by[arm, sd])[s]['psnr'] - at(by['vanilla', sd])[s]['psnr'] for sd in seeds])
                out[arm][f'{s}_{when}'] = d
    return out


def plot_curves(runs, arms, path, title):
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    fig, axs = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, s in zip(axs, ('Set5', 'Set14')):
        for arm in arms:
            rs = [r for r in runs if r['arm'] == arm]
            if not rs: continue
            its = [p['iter'] for p in rs[0]['curve']]
            v = np.array([[p[s]['psnr'] for p in r['curve']] for r in rs])
            ax.plot(its, v.mean(0), label=arm); ax.fill_between(its, v.min(0), v.max(0), alpha=0.2)
        ax.set_title(f'{s}: PSNR (Y), mean and min–max over seeds'); ax.set_xlabel('iteration'); ax.set_ylabel('dB'); ax.grid(alpha=.3)
    axs[0].legend(fontsize=8); fig.suptitle(title, fontsize=9); fig.tight_layout(); fig.savefig(path, dpi=110); plt.close(fig)


def _fmt(d, digits=2):
    "mean [lo, hi] of a `t_ci` result."
    if d is None: return '–'
    m = f"{d['mean']:.{digits}f}"
    return m if d['ci95'] is None else f"{m} [{d['ci95'][0]:.{digits}f}, {d['ci95'][1]:.{digits}f}]"


def table(res) -> str:
    "The results table (markdown): PSNR (Y) at 20 % of the run and at the end, mean and 95 % CI over seeds, and the paired difference vs vanilla."
    sm, n = res['main']['summary'], res['setup']['seeds']
    rows = ['| arm | Set5 @20 % | Set5 end | Set5 end − vanilla | Set14 @20 % | Set14 end | Set14 end − vanilla |', '|---|---|---|---|---|---|---|']
    for arm, d in sm.items():
        rows.append(f"| {arm} | {_fmt(d['Set5_p20']['psnr'])} | {_fmt(d['Set5_end']['psnr'])} | {_fmt(d['Set5_end'].get('psnr_minus_vanilla'))} | "
                    f"{_fmt(d['Set14_p20']['psnr'])} | {_fmt(d['Set14_end']['psnr'])} | {_fmt(d['Set14_end'].get('psnr_minus_vanilla'))} |")
    p = res['published']
    rows.append(f"| *published* vanilla → ECO (not comparable: {p['source']}) | | {p['vanilla']['Set5']} → {p['eco']['Set5']} | | | {p['vanilla']['Set14']} → {p['eco']['Set14']} | |")
    it = sm['vanilla']['Set5_p20']['iter'], sm['vanilla']['Set5_end']['iter']
    return (f"PSNR (Y, dB) at iteration {it[0]} (20 %) and {it[1]} (end); mean [95 % t-interval] over {n} seeds; "
            "differences are paired by seed.\n\n" + '\n'.join(rows) + '\n')


def claims(res) -> list[dict]:
    """The paper's claims, checked on this run's paired differences (mean and 95 % CI over seeds, Set5 and Set14):
    'holds' when the interval is on the claimed side of 0, 'not shown' when it straddles 0, 'contradicted' otherwise."""
    sm = res['main']['summary']
    def verdict(d, sign):   # sign +1: claimed > 0 (or >= 0), -1: claimed < 0
        if d['ci95'] is None: return 'untested (one seed: no interval)'
        lo, hi = d['ci95']
        if sign * lo > 0 and sign * hi > 0: return 'holds'
        if sign * lo < 0 and sign * hi < 0: return 'contradicted'
        return 'not shown'
    out = []
    for text, arm, when, sign in (('ECO (sigmoid) >= vanilla at 20 % of the run', 'eco_sigmoid', 'p20', +1),
                                  ('ECO (sigmoid) >= vanilla at the end', 'eco_sigmoid', 'end', +1),
                                  ('ECO (linear) >= vanilla at 20 % of the run', 'eco_linear', 'p20', +1),
                                  ('ECO (linear) >= vanilla at the end', 'eco_linear', 'end', +1),
                                  ('KD gains early (> vanilla at 20 %)', 'kd', 'p20', +1),
                                  ('KD ends below vanilla', 'kd', 'end', -1),
                                  ('ECO w/o mixup ends below vanilla (plateau)', 'eco_none', 'end', -1)):
        for s_ in ('Set5', 'Set14'):
            d = sm[arm][f'{s_}_{when}']['psnr_minus_vanilla']
            out.append({'claim': text, 'set': s_, 'diff_db': d['mean'], 'ci95': d['ci95'], 'verdict': verdict(d, sign)})
    return out


def side_table(res) -> str:
    "Batch-size and real-world parts: the ECO arm minus vanilla at the end, paired by seed (mean [95 % CI] when 2+ seeds)."
    rows = ['| part | ECO arm − vanilla, Set5 (dB) | Set14 (dB) | seeds |', '|---|---|---|---|']
    def diff(runs, arm, key=lambda r: None):
        out = []
        for k in sorted({key(r) for r in runs}, key=lambda v: (v is None, v)):
            by = {r['seed']: r for r in runs if key(r) == k and r['arm'] == arm}
            van = {r['seed']: r for r in runs if key(r) == k and r['arm'] == 'vanilla'}
            sd = sorted(set(by) & set(van))
            d = {s_: t_ci([by[x]['curve'][-1][s_]['psnr'] - van[x]['curve'][-1][s_]['psnr'] for x in sd]) for s_ in ('Set5', 'Set14')}
            out.append((k, d, len(sd)))
        return out
    for k, d, n in diff(res.get('batch_size', []), 'eco_none', key=lambda r: r['bs']):
        rows.append(f"| batch size {k}: eco_none | {_fmt(d['Set5'])} | {_fmt(d['Set14'])} | {n} |")
    for part, runs in res.get('realworld', {}).items():
        for _, d, n in diff(runs, 'eco_sigmoid'):
            rows.append(f"| {part}: eco_sigmoid | {_fmt(d['Set5'])} | {_fmt(d['Set14'])} | {n} |")
    return '\n'.join(rows) + '\n'


def claims_table(cl) -> str:
    "The claims and their verdicts as a markdown table."
    ci = lambda c: '–' if c['ci95'] is None else f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]"
    rows = [f"| {c['claim']} | {c['set']} | {c['diff_db']:+.3f} | {ci(c)} | {c['verdict']} |" for c in cl]
    return '| claim | set | arm − vanilla (dB) | 95 % CI | verdict |\n|---|---|---|---|---|\n' + '\n'.join(rows) + '\n'


def report(res, outdir: Path):
    "Every figure and the table from a results dict (what `main` ran)."
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    outdir.mkdir(parents=True, exist_ok=True)
    if 'main' in res:
        plot_curves(res['main']['runs'], ARMS, outdir / 'eco_curves.png',
                    f"ECO vs baselines, x2 bicubic, {res['setup']['n_iter']} iterations, batch {res['setup']['bs']} (this machine)")
        (outdir / 'eco_table.md').write_text(table(res) + '\n' + claims_table(claims(res)) + '\n' + side_table(res))
        land = {r['arm']: r['landscape'] for r in res['main']['runs'] if r['seed'] == 0 and r['landscape']}
        if land:
            fig, axs = plt.subplots(1, 2, figsize=(10, 3.4))
            for arm in ('vanilla', 'eco_none', 'eco_sigmoid'):
                if arm not in land: continue
                its = [q['iter'] for q in land[arm]]
                axs[0].plot(its, [q['loss_range'] for q in land[arm]], 'o-', label=arm)
                axs[1].plot(its, [q['max_grad_diff'] for q in land[arm]], 'o-', label=arm)
            axs[0].set_title('loss variation range along the gradient'); axs[1].set_title('max ‖∇L(θ−ηg) − ∇L(θ)‖₂')
            for ax in axs: ax.set_xlabel('iteration'); ax.set_yscale('log'); ax.grid(alpha=.3); ax.legend(fontsize=8)
            fig.tight_layout(); fig.savefig(outdir / 'eco_landscape.png', dpi=110); plt.close(fig)
    if 'batch_size' in res:
        fig, axs = plt.subplots(1, 2, figsize=(10, 3.4))
        for ax, s in zip(axs, ('Set5', 'Set14')):
            for arm in ('vanilla', 'eco_none'):
                bss = sorted({r['bs'] for r in res['batch_size']})
                v = [statistics.fmean(r['curve'][-1][s]['psnr'] for r in res['batch_size'] if r['arm'] == arm and r['bs'] == b) for b in bss]
                ax.plot(bss, v, 'o-', label=arm)   # mean over the part's seeds
            ax.set_xscale('log', base=2); ax.set_xlabel('batch size'); ax.set_ylabel('PSNR (Y) at the end, dB'); ax.set_title(s); ax.grid(alpha=.3); ax.legend(fontsize=8)
        fig.tight_layout(); fig.savefig(outdir / 'eco_batch_size.png', dpi=110); plt.close(fig)
    if 'realworld' in res:
        fig, axs = plt.subplots(1, 2, figsize=(10, 3.4))
        for ax, (k, title) in zip(axs, (('noise_0.01', 'real-world x2: σ = 0.01 noise on the LR (Set5)'), ('gold_light', "Gold 'light' degradation (Set5)"))):
            for arm in ('vanilla', 'eco_sigmoid'):
                rs = [r for r in res['realworld'][k] if r['arm'] == arm]
                v = np.array([[q['Set5']['psnr'] for q in r['curve']] for r in rs])
                ax.plot([q['iter'] for q in rs[0]['curve']], v.mean(0), label=f'{arm} ({len(rs)} seed{"s" if len(rs) > 1 else ""})')
            ax.set_title(title, fontsize=9); ax.set_xlabel('iteration'); ax.set_ylabel('PSNR (Y), dB'); ax.grid(alpha=.3); ax.legend(fontsize=8)
        fig.tight_layout(); fig.savefig(outdir / 'eco_realworld.png', dpi=110); plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--smoke', action='store_true', help='a few iterations per arm, one seed, nothing written')
    ap.add_argument('--side-seeds', type=int, default=1, help='seeds of the batch-size and real-world parts')
    ap.add_argument('--side-from', type=int, default=0, help='first of those seeds (with --merge: add seeds to an earlier run)')
    ap.add_argument('--seeds', type=int, default=3); ap.add_argument('--n-iter', type=int, default=1000)
    ap.add_argument('--every', type=int, default=100); ap.add_argument('--bs', type=int, default=16)
    ap.add_argument('--patch', type=int, default=64); ap.add_argument('--lr', type=float, default=1e-3)
    ap.add_argument('--span', type=float, default=0.5, help="the linear schedule's span (fraction of the run)")
    ap.add_argument('--max-per-image', type=int, default=30); ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--parts', default='main,bs,landscape,realworld')
    ap.add_argument('--silver-src', default=None, help='folder of training photos (default ../shared/data/Kodak24; e.g. DIV2K_train_HR on a GPU machine)')
    ap.add_argument('--device', default='cpu', help="'cpu' (the committed results) or 'cuda'")
    ap.add_argument('--full-student', action='store_true', help="the paper's EDSR-baseline (64 channels x 16 blocks) instead of 32 x 4")
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'eco.json'))
    ap.add_argument('--smoke-out', default=None, help='with --smoke: write the (meaningless) smoke results here, to test the report')
    ap.add_argument('--report-only', action='store_true', help='remake the figures and the table from --out')
    ap.add_argument('--merge', action='store_true', help='update the parts run now in an existing --out (keep the others)')
    a = ap.parse_args(argv)
    if a.report_only: report(json.loads(Path(a.out).read_text()), Path(a.out).parent); return None
    shared = shared_data()
    if shared is None or not (shared / 'Kodak24').is_dir() or not (shared / 'weights_IMDN' / 'IMDN_x2.pth').is_file():
        print('eco.py: needs ../shared/data (Kodak24, Set5, Set14, weights_IMDN): skipped'); return None
    if a.smoke: a.seeds, a.n_iter, a.every, a.max_per_image, a.bs, a.out = 1, 4, 2, 2, 4, a.smoke_out or a.out
    torch.set_num_threads(a.threads)
    parts, t_all = set(a.parts.split(',')), time.time()
    work = Path(tempfile.mkdtemp(prefix='eco-'))
    if a.full_student: STUDENT.update(n_feats=64, n_blocks=16)
    build_silver(Path(a.silver_src) if a.silver_src else shared / 'Kodak24', work / 'silver', patch=96, max_per_image=a.max_per_image, seed=0, verbose=False)
    silver = SilverStore(work / 'silver')
    teacher = load_trained(shared / 'weights_IMDN' / 'IMDN_x2.pth', 'imdn', 2, device=a.device)
    crep = build_centroids(teacher, silver, work / 'cent', 2, bs=16, verbose=False)
    cents = CentroidStore(work / 'cent', silver)
    sets, noisy, gold_sets = eval_sets(shared), eval_sets(shared, noise=0.01), eval_sets(shared, degrade='light')
    if a.smoke:   # two images per set, their top-left 96 px (48 px LR): the machinery, fast
        sets, noisy, gold_sets = ({k: [(lq[:, :48, :48], hq[:, :96, :96]) for lq, hq in v[:2]] for k, v in d.items()} for d in (sets, noisy, gold_sets))
    res = {'setup': {'silver': f"{a.silver_src or 'Kodak24'}, {len(silver)} patches of 96 px (at most {a.max_per_image} per image)", 'student': {'arch': 'edsr_baseline', **STUDENT},
                     'teacher': 'IMDN x2 (official weights)', 'centroids': crep, 'n_iter': a.n_iter, 'bs': a.bs, 'patch': a.patch,
                     'lr': a.lr, 'schedule': 'cosine, no warm-up', 'seeds': a.seeds, 'every': a.every, 'linear_span': a.span,
                     'hardware': f'{platform.processor() or platform.machine()}, torch threads {a.threads}', 'torch': torch.__version__,
                     'command': 'python experiments/eco.py' + (' --smoke' if a.smoke else '')},
           'published': PUBLISHED}
    def arm_runs(arms, seeds, **over):
        o = argparse.Namespace(**{**vars(a), 'degrade_override': None, 'lr_noise': None, 'landscape_at': None, **over})
        out = []
        for sd in seeds:
            for arm in arms:
                r = run_arm(arm, sd, silver, cents, gold_sets if o.degrade_override else noisy if o.lr_noise else sets, o); out.append(r)
                last = r['curve'][-1]
                print(f"  {arm:12s} seed {sd} bs {o.bs:2d}: Set5 {last['Set5']['psnr']:.2f} dB, Set14 {last['Set14']['psnr']:.2f} dB ({r['seconds']:.0f} s)", flush=True)
        return out
    if 'main' in parts:
        print('main comparison', flush=True)
        land_at = [max(1, a.n_iter // 10), a.n_iter // 2, a.n_iter] if 'landscape' in parts else None
        runs = arm_runs(ARMS, range(a.seeds), landscape_at=land_at)
        res['main'] = {'runs': runs, 'summary': summarise(runs, ARMS)}
    if 'bs' in parts:
        print('batch-size robustness', flush=True)
        bsr = []
        for bs in (2, 4, 8, 16):
            bsr += arm_runs(('vanilla', 'eco_none'), range(a.side_from, a.side_seeds), bs=bs)
        res['batch_size'] = bsr
    if 'realworld' in parts:
        print('real-world x2 (sigma 0.01 noise) and Gold (light) ECO', flush=True)
        rw = arm_runs(('vanilla', 'eco_sigmoid'), range(a.side_from, a.side_seeds), lr_noise=0.01)
        gold = arm_runs(('vanilla', 'eco_sigmoid'), range(a.side_from, a.side_seeds), degrade_override='light')
        res['realworld'] = {'noise_0.01': rw, 'gold_light': gold}
    res['seconds_total'] = round(time.time() - t_all, 1)
    if a.smoke and not a.smoke_out: print(f"smoke run ok in {res['seconds_total']:.0f} s (nothing written)"); return res
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    if a.merge and Path(a.out).is_file():
        old = json.loads(Path(a.out).read_text())
        def key(r): return (r['arm'], r['seed'], r['bs'])
        def combine(o, n): return [r for r in o if key(r) not in {key(x) for x in n}] + n   # runs of the same arm, seed and bs are replaced
        if 'batch_size' in res and 'batch_size' in old: res['batch_size'] = combine(old['batch_size'], res['batch_size'])
        if 'realworld' in res and 'realworld' in old: res['realworld'] = {k: combine(old['realworld'].get(k, []), v) for k, v in res['realworld'].items()}
        res = {**old, **{k: v for k, v in res.items() if k in ('main', 'batch_size', 'realworld')},
               'setup': old['setup'], 'seconds_total': old['seconds_total'] + res['seconds_total'],
               'merged': old.get('merged', []) + [{'parts': sorted(parts), 'command': res['setup']['command'] + ' --parts ' + a.parts + f' --side-seeds {a.side_seeds} --side-from {a.side_from} --merge'}]}
    Path(a.out).write_text(json.dumps(res, indent=1))
    report(res, Path(a.out).parent)
    print(f"wrote {a.out} ({res['seconds_total'] / 60:.1f} min)")
    return res


if __name__ == '__main__': main()
