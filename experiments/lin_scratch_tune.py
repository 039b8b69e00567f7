#!/usr/bin/env python
"""The lin / scratch / tune comparison of LPIPS (Zhang et al., CVPR 2018, Table 5 / the design notes' 2AFC table),
reproduced as one protocol with statistics.

Protocol: for each trunk x paradigm x seed, train a metric on the 2AFC train split with the official recipe
(Adam lr 1e-4 betas (0.5, 0.999), batch 50, `--epochs` constant + `--decay-epochs` linear decay, dropout 0.5 in
the heads, Dist2Logit + BCE on soft labels, projection after every step; tune: trunk lr 1e-5), keep the epoch with
the best validation 2AFC, and score it per validation category. Baselines: L2 in Lab (as the official `L2`), 1-SSIM,
1-MS-SSIM (3x3 window: 64 px patches are too small for the default 11x11 at 5 scales), -PSNR, and each trunk
without heads (the plain feature distance). JND mAP when the data root has JND folders.

Statistics: per-category 2AFC with bootstrap 95 % CIs over triplets (scipy.stats.bootstrap, BCa; the per-triplet
score averaged over seeds); paired comparisons between paradigms on the same triplets (paired bootstrap CI of the
difference, exact McNemar on the majority-agreement indicators), a paired t-test over seeds and Cohen's d_z.

Data: `--data ROOT` (BAPPS as `download_bapps` leaves it, or any `make_2afc` folder); without it the offline set is
built from ../shared/data/Kodak24 with `make_2afc` -- SYNTHETIC judgments, and every table and figure says so.
Trunks: alex / vgg / squeeze take ImageNet weights for lin and tune when they are cached (`load_trunk`); otherwise
those rows are skipped and said so. `sr` is the pretrained IMDN x2 of ../shared/data (tapped at fea_conv, IMDB1,
IMDB2 on the half-size input, i.e. the LR image), the only pretrained trunk available offline; scratch starts it
from random weights.

Usage:
  python experiments/lin_scratch_tune.py                       # the offline run (see --help for the sizes)
  python experiments/lin_scratch_tune.py --data dataset --trunks alex vgg squeeze --epochs 5 --decay-epochs 5 \
      --seeds 0 1 2 --n-train 0                                # BAPPS + cached ImageNet weights: the real reproduction
  python experiments/lin_scratch_tune.py --smoke --out /tmp/x  # CI: the machinery, not the claims
Writes experiments/results/lin_scratch_tune.json, lin_scratch_tune_table.md and figures (lst_*.png).
"""
from __future__ import annotations
import argparse, json, platform, resource, sys, tempfile, time, warnings
from pathlib import Path

warnings.filterwarnings('ignore')
import numpy as np
import torch
from scipy import stats as sps

from restorekit.core import shared_data, sample_images
from restorekit.perceptual import find_trunk_file, _NETS
from restorekit.twoafc import make_2afc, bapps_2afc, bapps_jnd, score_2afc, score_jnd, judgment_provenance
from restorekit.twoafc_train import twoafc_model, twoafc_learner, twoafc_dls, cached_lin_learner, score_model, PerceptualMetric

PUBLISHED = {  # 2AFC (%) on BAPPS val, as the project's design notes give them (published, not measured here)
    'alex': {'lin': 69.8, 'scratch': 70.2, 'tune': 69.7},
    'vgg': {'lin': 69.2, 'scratch': 70.0, 'tune': 69.8},
    'squeeze': {'lin': 70.0, 'scratch': 69.2, 'tune': 69.6},
}
SR_TAPS = ['fea_conv', 'IMDB1', 'IMDB2']


# ---------------------------------------------------------------- statistics
def bootstrap_ci(x, n_resamples=2000, seed=0, level=0.95) -> tuple[float, float]:
    "BCa bootstrap CI of the mean of `x` (scipy.stats.bootstrap)."
    x = np.asarray(x, np.float64)
    if len(x) < 2 or np.all(x == x[0]): return float(x.mean()), float(x.mean())
    r = sps.bootstrap((x,), np.mean, n_resamples=n_resamples, confidence_level=level, method='BCa', random_state=np.random.default_rng(seed))
    return float(r.confidence_interval.low), float(r.confidence_interval.high)

def paired_bootstrap_diff(a, b, n_resamples=2000, seed=0, level=0.95) -> dict:
    "Mean of `a - b` over paired items, its BCa bootstrap CI, and the two-sided bootstrap p (fraction of resampled means on the other side of 0, doubled)."
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    lo, hi = bootstrap_ci(d, n_resamples, seed, level)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (n_resamples, len(d)))].mean(1)
    p = min(1.0, 2 * min((means <= 0).mean(), (means >= 0).mean())) if d.any() else 1.0
    return {'diff': float(d.mean()), 'ci': [lo, hi], 'p_bootstrap': float(p)}

def mcnemar(a_ok, b_ok) -> dict:
    "Exact McNemar test on paired 0/1 outcomes: b = a right & b wrong, c = a wrong & b right, p = two-sided binomial(b, b+c, ½)."
    a_ok, b_ok = np.asarray(a_ok, bool), np.asarray(b_ok, bool)
    b, c = int((a_ok & ~b_ok).sum()), int((~a_ok & b_ok).sum())
    p = 1.0 if b + c == 0 else float(sps.binomtest(b, b + c, 0.5).pvalue)
    return {'b': b, 'c': c, 'p': p}

def paired_t(a, b) -> dict:
    "Paired t-test of `a` vs `b` (scipy.stats.ttest_rel); NaN p with fewer than 2 pairs or no variance."
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or np.allclose(a - b, (a - b)[0]): return {'t': float('nan'), 'p': float('nan'), 'n': len(a)}
    r = sps.ttest_rel(a, b)
    return {'t': float(r.statistic), 'p': float(r.pvalue), 'n': len(a)}

def cohens_d_paired(a, b) -> float:
    "Cohen's d_z for paired samples: mean(a − b) / sd(a − b) (ddof 1)."
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    sd = d.std(ddof=1) if len(d) > 1 else 0.
    return float(d.mean() / sd) if sd > 0 else float('nan')

def t_ci(xs, level=0.95) -> list:
    "t-interval of the mean over seeds."
    xs = np.asarray(xs, np.float64)
    if len(xs) < 2: return [float(xs.mean())] * 2
    h = sps.t.ppf((1 + level) / 2, len(xs) - 1) * xs.std(ddof=1) / np.sqrt(len(xs))
    return [float(xs.mean() - h), float(xs.mean() + h)]


# ---------------------------------------------------------------- baselines
def _lab(x):
    from skimage.color import rgb2lab
    return torch.from_numpy(np.stack([rgb2lab(im.permute(1, 2, 0).numpy().astype(np.float64)) for im in x.cpu()])).permute(0, 3, 1, 2)

def baseline_fns() -> dict:
    "Distance functions of the classic baselines, on batches in [0, 1]."
    from pytorch_msssim import ssim as _ssim, ms_ssim as _msssim
    return {'L2 (Lab)': lambda x, y: (_lab(x) - _lab(y)).square().flatten(1).mean(1),
            '1 - SSIM': lambda x, y: 1 - _ssim(x, y, data_range=1., size_average=False),
            '1 - MS-SSIM (3x3)': lambda x, y: 1 - _msssim(x, y, data_range=1., size_average=False, win_size=3),
            '-PSNR': lambda x, y: 10 * torch.log10((x - y).square().flatten(1).mean(1).clamp_min(1e-10))}


# ---------------------------------------------------------------- the protocol
@torch.no_grad()
def score_jnd_ds(dist, ds, bs=100) -> float:
    "JND mAP (official `score_jnd_dataset`) of a distance on a JND dataset."
    d = [dist(p0, p1).view(-1).float().cpu() for p0, p1, _ in torch.utils.data.DataLoader(ds, batch_size=bs)]
    return float(score_jnd(torch.cat(d).numpy(), ds.same.numpy()))

def pretrained_weights(trunk: str, sr_weights) -> str | None:
    "The pretrained weights lin/tune use for `trunk`, or None when unavailable offline."
    if trunk == 'sr': return str(sr_weights) if sr_weights and Path(sr_weights).is_file() else None
    return 'imagenet' if find_trunk_file(_NETS[trunk][0]) is not None else None

def _kw(trunk):
    return dict(sr_arch='imdn', sr_scale=2, sr_layers=SR_TAPS, sr_input_scale=0.5) if trunk == 'sr' else {}

def _quiet(learn):
    learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == 'ProgressCallback']); learn.logger = lambda *a, **k: None
    return learn

def _peak_rss_mb() -> float: return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def run_one(trunk, paradigm, seed, trn, val, a, weights, cache=None, tmp=None) -> dict:
    "Train one metric; its best epoch's per-triplet scores, curves, time and parameters."
    torch.manual_seed(seed)
    model = twoafc_model(trunk, paradigm, None if paradigm == 'scratch' else weights, seed=seed, **_kw(trunk))
    kw = dict(lr=a.lr, trunk_lr=a.lr / 10 if paradigm == 'tune' else None, keep_best=str(Path(tmp)/f'{trunk}_{paradigm}_{seed}.safetensors'), path=tmp, const_frac=a.epochs / (a.epochs + a.decay_epochs))
    t0 = time.time()
    if paradigm == 'lin':
        learn = cached_lin_learner(model, trn, val, bs=a.bs, seed=seed, device='cpu', **kw) if cache is None else _cached_from(model, cache, a, seed, kw)
    else: learn = twoafc_learner(twoafc_dls(trn, val, bs=a.bs, seed=seed, device='cpu'), model, **kw)
    _quiet(learn).fit(a.epochs + a.decay_epochs)
    secs = time.time() - t0 + getattr(learn, 'cache_seconds', 0.)
    res = score_model(model, val, device='cpu')
    rec = learn.recorder
    names = rec.metric_names[1:-1]
    curves = [dict(zip(names, map(float, v))) for v in rec.values]
    heads = [w.detach().view(-1).numpy().tolist() for w in model.metric.head_weights]
    return {'trunk': trunk, 'paradigm': paradigm, 'seed': seed, 'twoafc': res['twoafc'], 'per_category': res['per_category'],
            'scores': res['scores'].tolist(), 'agree': _agree(res, val), 'curves': curves, 'lrs': [float(l) for l in rec.lrs],
            'seconds': secs, 'cache_seconds': getattr(learn, 'cache_seconds', 0.), 'trainable_params': sum(p.numel() for p in learn.model.parameters() if p.requires_grad),
            'heads': heads, 'peak_rss_mb': _peak_rss_mb(), 'metric': model.metric}

def _cached_from(model, cache, a, seed, kw):
    "A cached-lin learner on caches computed once per trunk (the trunk is frozen and identical across seeds)."
    from restorekit.twoafc_train import CachedLinModel, cached_dls
    lm = CachedLinModel(model.metric, model.rank); lm.spec = model.spec
    learn = twoafc_learner(cached_dls(cache[0], cache[1], a.bs, seed, 'cpu'), lm, **kw)
    learn.cache_seconds = cache[2]
    return learn

def _agree(res, val) -> list:
    "Per triplet: 1 if the metric's choice agrees with the majority judgment, 0 if not, None on ties of h or d."
    h = val.judge.numpy()
    out = []
    for d0, d1, hi in zip(res['d0'], res['d1'], h):
        if hi == 0.5 or d0 == d1: out.append(None)
        else: out.append(int((d1 < d0) == (hi > 0.5)))
    return out

def score_baselines(val, trunks, sr_weights) -> dict:
    out = {}
    for name, fn in baseline_fns().items():
        r = score_model(fn, val, device='cpu')
        out[name] = {'twoafc': r['twoafc'], 'per_category': r['per_category'], 'scores': r['scores'].tolist(), 'agree': _agree(r, val)}
    for t in trunks:   # the trunk without heads (heads of ones): the plain feature distance
        w = pretrained_weights(t, sr_weights) or 'random'
        if t == 'sr' and w == 'random': continue
        m = twoafc_model(t, 'lin', w, heads='ones', dropout=0., seed=0, **_kw(t))
        r = score_model(m, val, device='cpu')
        out[f'{t} trunk, no heads ({"pretrained" if w != "random" else "random weights"})'] = {
            'twoafc': r['twoafc'], 'per_category': r['per_category'], 'scores': r['scores'].tolist(), 'agree': _agree(r, val)}
    return out

def plan(trunks, paradigms, sr_weights) -> tuple[list, list]:
    "The (trunk, paradigm) rows to run, and those skipped with the reason."
    rows, skipped = [], []
    for t in trunks:
        for p in paradigms:
            if p != 'scratch' and pretrained_weights(t, sr_weights) is None:
                why = ('ImageNet weights not cached here (load_trunk would need to download them)' if t != 'sr'
                       else 'no pretrained SR weights at ../shared/data/weights_IMDN/IMDN_x2.pth')
                skipped.append({'trunk': t, 'paradigm': p, 'why': why}); continue
            rows.append((t, p))
    return rows, skipped


# ---------------------------------------------------------------- summaries
def summarise(runs: list, base: dict, val, a) -> dict:
    cats = list(dict.fromkeys(val.category))
    cat_of = np.asarray(val.category)
    rows = {}
    for (t, p) in dict.fromkeys((r['trunk'], r['paradigm']) for r in runs):
        rs = [r for r in runs if r['trunk'] == t and r['paradigm'] == p]
        S = np.asarray([r['scores'] for r in rs])          # seeds x triplets
        s = S.mean(0)                                      # per-triplet score averaged over seeds
        rows[f'{t}/{p}'] = {
            'trunk': t, 'paradigm': p, 'seeds': [r['seed'] for r in rs], 'twoafc_per_seed': [r['twoafc'] for r in rs],
            'twoafc': float(s.mean()), 'ci_triplets': bootstrap_ci(s, seed=a.boot_seed), 'ci_seeds': t_ci([r['twoafc'] for r in rs]),
            'per_category': {c: {'twoafc': float(s[cat_of == c].mean()), 'ci': bootstrap_ci(s[cat_of == c], seed=a.boot_seed)} for c in cats},
            'seconds_per_run': float(np.mean([r['seconds'] for r in rs])), 'trainable_params': rs[0]['trainable_params'],
            'peak_rss_mb': max(r['peak_rss_mb'] for r in rs),
            'jnd_map': float(np.mean([r['jnd_map'] for r in rs])) if all('jnd_map' in r for r in rs) else None}
    comps = []
    for t in dict.fromkeys(r['trunk'] for r in runs):
        ps = [p for p in ('lin', 'scratch', 'tune') if f'{t}/{p}' in rows]
        for i, p in enumerate(ps):
            for q in ps[i + 1:]:
                A = [r for r in runs if r['trunk'] == t and r['paradigm'] == p]; B = [r for r in runs if r['trunk'] == t and r['paradigm'] == q]
                sa, sb = np.mean([r['scores'] for r in A], 0), np.mean([r['scores'] for r in B], 0)
                seeds = sorted(set(r['seed'] for r in A) & set(r['seed'] for r in B))
                pa = [next(r['twoafc'] for r in A if r['seed'] == s) for s in seeds]; pb = [next(r['twoafc'] for r in B if r['seed'] == s) for s in seeds]
                ag = [(x, y) for ra in A for rb in B if ra['seed'] == rb['seed'] for x, y in zip(ra['agree'], rb['agree']) if x is not None and y is not None]
                comps.append({'trunk': t, 'a': p, 'b': q, 'paired_bootstrap': paired_bootstrap_diff(sa, sb, seed=a.boot_seed),
                              'mcnemar': mcnemar([x for x, _ in ag], [y for _, y in ag]), 'paired_t_seeds': paired_t(pa, pb),
                              'cohens_d_seeds': cohens_d_paired(pa, pb), 'cohens_d_triplets': cohens_d_paired(sa, sb), 'seeds': seeds})
    bl = {k: {'twoafc': v['twoafc'], 'ci_triplets': bootstrap_ci(v['scores'], seed=a.boot_seed), 'per_category': v['per_category'], 'jnd_map': v.get('jnd_map')} for k, v in base.items()}
    return {'rows': rows, 'comparisons': comps, 'baselines': bl, 'categories': cats}

def _pct(x): return f'{100 * x:.1f}'

def table_md(res: dict) -> str:
    j = res['judgments']
    L = [f"# lin / scratch / tune: 2AFC on the validation split ({j} judgments)", '',
         f"Data: {res['data']}. Command: `{res['command']}`. {res['shortened']}", '',
         f"2AFC score in % (agreement with the {j} judgments; chance 50). CI (triplets): BCa bootstrap 95 % over validation triplets "
         "of the per-triplet score averaged over seeds. CI (seeds): t-interval over seeds.", '',
         '| trunk | paradigm | 2AFC | CI (triplets) | CI (seeds) | per seed | ' + ' | '.join(res['summary']['categories']) + ' | s / run | trainable params | process peak RSS MB (cumulative) |',
         '|' + '---|' * (9 + len(res['summary']['categories']))]
    for k, r in res['summary']['rows'].items():
        cats = ' | '.join(f"{_pct(r['per_category'][c]['twoafc'])} [{_pct(r['per_category'][c]['ci'][0])}, {_pct(r['per_category'][c]['ci'][1])}]" for c in res['summary']['categories'])
        L.append(f"| {r['trunk']} | {r['paradigm']} | **{_pct(r['twoafc'])}** | [{_pct(r['ci_triplets'][0])}, {_pct(r['ci_triplets'][1])}] | "
                 f"[{_pct(r['ci_seeds'][0])}, {_pct(r['ci_seeds'][1])}] | {', '.join(_pct(v) for v in r['twoafc_per_seed'])} | {cats} | "
                 f"{r['seconds_per_run']:.0f} | {r['trainable_params']:,} | {r['peak_rss_mb']:.0f} |")
    if res['jnd']: L += ['', 'JND mAP (mean over seeds): ' + ', '.join(f"{k} {100 * r['jnd_map']:.1f}" for k, r in res['summary']['rows'].items() if r['jnd_map'] is not None)]
    for s in res['skipped']: L.append(f"| {s['trunk']} | {s['paradigm']} | not run: {s['why']} |" + ' |' * (7 + len(res['summary']['categories'])))
    L += ['', '**Baselines** (no training):', '', '| distance | 2AFC | CI (triplets) | ' + ' | '.join(res['summary']['categories']) + ' |', '|' + '---|' * (3 + len(res['summary']['categories']))]
    for k, b in res['summary']['baselines'].items():
        L.append(f"| {k} | {_pct(b['twoafc'])} | [{_pct(b['ci_triplets'][0])}, {_pct(b['ci_triplets'][1])}] | " + ' | '.join(_pct(b['per_category'][c]) for c in res['summary']['categories']) + ' |')
    L += ['', '**Paired comparisons** (same triplets, same seeds):', '',
          '| trunk | a − b | Δ 2AFC (pts) | 95 % CI | p (bootstrap) | McNemar b / c, p | paired t over seeds (p) | d_z seeds | d_z triplets |', '|---|---|---|---|---|---|---|---|---|']
    for c in res['summary']['comparisons']:
        pb, mc, pt = c['paired_bootstrap'], c['mcnemar'], c['paired_t_seeds']
        L.append(f"| {c['trunk']} | {c['a']} − {c['b']} | {100 * pb['diff']:+.2f} | [{100 * pb['ci'][0]:+.2f}, {100 * pb['ci'][1]:+.2f}] | {pb['p_bootstrap']:.3g} | "
                 f"{mc['b']} / {mc['c']}, {mc['p']:.3g} | t = {pt['t']:.2f} (p = {pt['p']:.3g}, n = {pt['n']}) | {c['cohens_d_seeds']:.2f} | {c['cohens_d_triplets']:.3f} |")
    L += ['', '**Published** (BAPPS val 2AFC %, human judgments; the design notes\' table — printed for reference, not measured here):', '',
          '| trunk | lin | scratch | tune |', '|---|---|---|---|']
    L += [f"| {t} | {v['lin']} | {v['scratch']} | {v['tune']} |" for t, v in PUBLISHED.items()]
    return '\n'.join(L) + '\n'


def figures(res: dict, runs: list, out: Path):
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    j = res['judgments']
    keys = list(dict.fromkeys((r['trunk'], r['paradigm']) for r in runs))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
    for t, p in keys:
        rs = [r for r in runs if r['trunk'] == t and r['paradigm'] == p]
        e = np.arange(1, len(rs[0]['curves']) + 1)
        a1.plot(e, np.mean([[c['train_loss'] for c in r['curves']] for r in rs], 0), 'o-', label=f'{t}/{p}')
        a2.plot(e, np.mean([[c['twoafc'] for c in r['curves']] for r in rs], 0), 'o-', label=f'{t}/{p}')
    a1.set_xlabel('epoch'); a1.set_ylabel('train loss (BCE)'); a2.set_xlabel('epoch'); a2.set_ylabel('val 2AFC'); a2.axhline(.5, c='gray', ls=':')
    a2.legend(fontsize=7); fig.suptitle(f'learning curves, mean over seeds ({j} judgments)', fontsize=9); fig.tight_layout()
    fig.savefig(out/'lst_curves.png', dpi=100); plt.close(fig)
    hk = [(t, p) for t, p in keys]
    n = max(len(next(r for r in runs if (r['trunk'], r['paradigm']) == k)['heads']) for k in hk)
    fig, axs = plt.subplots(len(hk), n, figsize=(2 * n, 1.6 * len(hk)), squeeze=False)
    for i, k in enumerate(hk):
        r = next(r for r in runs if (r['trunk'], r['paradigm']) == k and r['seed'] == min(x['seed'] for x in runs if (x['trunk'], x['paradigm']) == k))
        for l in range(n):
            ax = axs[i, l]
            if l < len(r['heads']): ax.hist(r['heads'][l], bins=25)
            else: ax.axis('off')
            ax.tick_params(labelsize=6)
            if l == 0: ax.set_ylabel(f'{k[0]}/{k[1]}', fontsize=7)
            if i == 0: ax.set_title(f'layer {l + 1}', fontsize=7)
    fig.suptitle(f'learned head weights per layer (seed {runs[0]["seed"]}; {j} judgments)', fontsize=9); fig.tight_layout()
    fig.savefig(out/'lst_heads.png', dpi=100); plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 2.6))
    r = runs[0]; ax.plot(np.arange(len(r['lrs'])), r['lrs']); ax.set_xlabel('iteration'); ax.set_ylabel('lr (heads)')
    ax.set_title(f"schedule: {res['epochs']} constant + {res['decay_epochs']} linear decay", fontsize=8); fig.tight_layout()
    fig.savefig(out/'lst_lr.png', dpi=100); plt.close(fig)


# ---------------------------------------------------------------- main
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--data', help='dataset root (BAPPS or make_2afc); default: build the synthetic set')
    ap.add_argument('--images', help='source images of the synthetic set (default ../shared/data/Kodak24)')
    ap.add_argument('--n-train', type=int, default=600); ap.add_argument('--n-val', type=int, default=500)
    ap.add_argument('--trunks', nargs='+', default=['sr', 'alex', 'squeeze']); ap.add_argument('--paradigms', nargs='+', default=['lin', 'scratch', 'tune'])
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    ap.add_argument('--epochs', type=int, default=1); ap.add_argument('--decay-epochs', type=int, default=1)
    ap.add_argument('--bs', type=int, default=50); ap.add_argument('--lr', type=float, default=1e-3, help='heads lr (official 1e-4; the offline default is 10x for its ~100x fewer steps); tune: trunk at lr/10')
    ap.add_argument('--boot-seed', type=int, default=0); ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--sr-weights', default=None, help='pretrained SR network for the sr trunk (default ../shared/data/weights_IMDN/IMDN_x2.pth)')
    ap.add_argument('--smoke', action='store_true', help='tiny data, 1 epoch, one seed: checks the machinery, not the claims')
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'))
    a = ap.parse_args(argv)
    if a.smoke: a.n_train, a.n_val, a.seeds, a.epochs, a.decay_epochs = 50, 40, a.seeds[:1], 1, 0
    torch.set_num_threads(a.threads)
    sd = shared_data()
    sr_weights = a.sr_weights or (sd/'weights_IMDN'/'IMDN_x2.pth' if sd else None)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp())
    t_all = time.time()
    if a.data: root = Path(a.data)
    else:
        src = a.images or (sd/'Kodak24' if sd and (sd/'Kodak24').is_dir() else sample_images())
        root = make_2afc(src, tmp/'synthetic', n_train=a.n_train, n_val=a.n_val, seed=0)
    trn, val = bapps_2afc(root, 'train', in_memory=True), bapps_2afc(root, 'val', in_memory=True)
    if a.data and a.n_train: trn = torch.utils.data.Subset(trn, range(min(a.n_train, len(trn))))
    judg = judgment_provenance(root)
    rows, skipped = plan(a.trunks, a.paradigms, sr_weights)
    print(f"{len(trn)} train / {len(val)} val triplets ({judg} judgments); rows: {rows}; skipped: {[(s['trunk'], s['paradigm']) for s in skipped]}", flush=True)
    base = score_baselines(val, a.trunks, sr_weights)
    jnd_ds = None
    if a.data:
        try: jnd_ds = bapps_jnd(root)
        except (OSError, ValueError) as e: print(f"no JND data under {root} ({e}): JND mAP not scored", flush=True)
    if jnd_ds is not None:
        for k, fn in baseline_fns().items(): base[k]['jnd_map'] = score_jnd_ds(fn, jnd_ds)
    runs, caches = [], {}
    for t, p in rows:
        for s in a.seeds:
            cache = None
            if p == 'lin':
                if t not in caches:
                    from restorekit.twoafc_train import cache_vectors
                    m0 = twoafc_model(t, 'lin', pretrained_weights(t, sr_weights), seed=0, **_kw(t)); t0 = time.time()
                    caches[t] = (cache_vectors(m0.metric, trn, device='cpu'), cache_vectors(m0.metric, val, device='cpu'), None)
                    caches[t] = (*caches[t][:2], time.time() - t0)
                cache = caches[t]
            r = run_one(t, p, s, trn, val, a, pretrained_weights(t, sr_weights), cache, tmp)
            m = r.pop('metric')
            if jnd_ds is not None: r['jnd_map'] = score_jnd_ds(m.eval(), jnd_ds)
            runs.append(r)
            print(f"{t}/{p} seed {s}: val 2AFC {r['twoafc']:.4f} ({judg}) in {r['seconds']:.0f} s", flush=True)
    res = {'judgments': judg, 'data': (f'make_2afc from {a.images or "Kodak24"} ({a.n_train} train / {a.n_val} val, seed 0)' if not a.data else str(a.data)),
           'command': 'python experiments/lin_scratch_tune.py ' + ' '.join(argv if argv is not None else sys.argv[1:]),
           'shortened': (f"Shortened from the official 5 + 5 epochs to {a.epochs} + {a.decay_epochs}, {len(trn)} training triplets, seeds {a.seeds}, heads lr {a.lr:g} (official 1e-4; tune trunk lr {a.lr / 10:g}); "
                         f"sr = pretrained IMDN x2 (../shared/data) tapped at {', '.join(SR_TAPS)} on the half-size input; alex / squeeze scratch from "
                         "torchvision's random initialisation." if not a.smoke else 'SMOKE run: tiny data, 1 epoch, one seed — machinery only, no claim.'),
           'epochs': a.epochs, 'decay_epochs': a.decay_epochs, 'seeds': a.seeds, 'n_train': len(trn), 'n_val': len(val), 'skipped': skipped,
           'platform': platform.platform(), 'torch': torch.__version__, 'threads': a.threads, 'total_seconds': None, 'jnd': jnd_ds is not None,
           'published': PUBLISHED}
    res['summary'] = summarise(runs, base, val, a)
    res['total_seconds'] = round(time.time() - t_all, 1)
    res['runs'] = [{k: v for k, v in r.items() if k not in ('scores', 'agree', 'heads')} for r in runs]
    (out/'lin_scratch_tune.json').write_text(json.dumps(res, indent=1))
    (out/'lin_scratch_tune_table.md').write_text(table_md(res))
    figures(res, runs, out)
    print(table_md(res))
    return res


if __name__ == '__main__': main()
