#!/usr/bin/env python
"""2AFC metric training speed: lin on cached features vs lin recomputing the trunk every step, and the per-epoch cost
of scratch / tune per trunk, on this machine.

Workload: the offline 2AFC set (`make_2afc`, SYNTHETIC judgments) built from ../shared/data/Kodak24 (or the bundled
photos), 64x64 triplets, batch 50, the official recipe (Adam, BCE, Dist2Logit, projection). Trunk weights are random
(ImageNet weights are not downloadable here); speed does not depend on the weights' values.
Arms, interleaved per round on the same data and shuffling seed:
  lin_e2e    : `twoafc_learner` with a frozen trunk: the trunk runs on every batch
  lin_cached : `cached_lin_learner`: one trunk pass per triplet (`cache_vectors`, timed apart), then epochs on vectors
Reported: median epoch seconds per arm and their paired ratio lin_e2e / lin_cached (goal >= 10x), the cache build
time, and the ratio over the official 10-epoch run including the cache build. For scratch / tune (same computation:
the whole trunk trains) the median seconds per training iteration per trunk (first `--warmup` dropped), and the epoch
time it implies for `--n-train` triplets.
Writes benchmarks/results/twoafc.json (twoafc_cuda.json on a GPU).

Usage: python benchmarks/twoafc.py [--rounds 3] [--n-train 500] [--n-val 100] [--iters 6] [--warmup 2] [--threads 2] [--device cpu]
"""
import argparse, json, platform, statistics, tempfile, time, warnings
from pathlib import Path

warnings.filterwarnings('ignore')
import torch
from fastai.callback.core import Callback

from restorekit.core import shared_data, sample_images
from restorekit.twoafc import make_2afc, bapps_2afc
from restorekit.twoafc_train import twoafc_model, twoafc_learner, twoafc_dls, cached_lin_learner


class Stamp(Callback):
    order, run_valid = 99, False
    def before_fit(self): self.t = [time.perf_counter()]
    def after_batch(self): self.t.append(time.perf_counter())
    def after_train(self): self.epoch_s = time.perf_counter() - self.t[0]


def quiet(learn):
    learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == 'ProgressCallback']); learn.logger = lambda *x, **k: None
    return learn


def lin_epoch(arm, trn, val, dev, tmp):
    model = twoafc_model('alex', 'lin', 'random', seed=0)
    st = Stamp()
    kw = dict(keep_best=False, path=tmp, cbs=[st])
    t0 = time.perf_counter()
    if arm == 'lin_cached': learn = cached_lin_learner(model, trn, val, bs=50, seed=0, device=dev, **kw)
    else: learn = twoafc_learner(twoafc_dls(trn, val, bs=50, seed=0, device=dev), model, **kw)
    setup = time.perf_counter() - t0
    quiet(learn).fit(1)
    return st.epoch_s, getattr(learn, 'cache_seconds', None), setup


def train_iter(net, paradigm, trn, val, dev, tmp, a):
    model = twoafc_model(net, paradigm, None if paradigm == 'scratch' else 'random', seed=0)
    st = Stamp()
    sub = torch.utils.data.Subset(trn, range(min(len(trn), 50 * (a.iters + a.warmup))))
    learn = quiet(twoafc_learner(twoafc_dls(sub, val, bs=50, seed=0, device=dev), model, keep_best=False, path=tmp, cbs=[st]))
    learn.fit(1, cbs=[_NoValid()])
    dt = [b - c for c, b in zip(st.t, st.t[1:])][a.warmup:]
    return statistics.median(dt)


class _NoValid(Callback):
    def before_validate(self): raise __import__('fastai').callback.core.CancelValidException()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rounds', type=int, default=3); ap.add_argument('--n-train', type=int, default=500); ap.add_argument('--n-val', type=int, default=100)
    ap.add_argument('--iters', type=int, default=6); ap.add_argument('--warmup', type=int, default=2); ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--device', default='cpu'); ap.add_argument('--out', default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    sd = shared_data()
    src = sd/'Kodak24' if sd is not None and (sd/'Kodak24').is_dir() else sample_images()
    tmp = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    root = make_2afc(src, tmp/'set', n_train=a.n_train, n_val=a.n_val, seed=0)
    make_s = time.perf_counter() - t0
    trn, val = bapps_2afc(root, 'train', in_memory=True), bapps_2afc(root, 'val', in_memory=True)
    rows = {'lin_e2e': [], 'lin_cached': [], 'cache_s': [], 'ratio': []}
    for r in range(a.rounds):
        res = {}
        for arm in (('lin_e2e', 'lin_cached') if r % 2 == 0 else ('lin_cached', 'lin_e2e')):
            res[arm] = lin_epoch(arm, trn, val, dev, tmp)
        rows['lin_e2e'].append(res['lin_e2e'][0]); rows['lin_cached'].append(res['lin_cached'][0]); rows['cache_s'].append(res['lin_cached'][1])
        rows['ratio'].append(res['lin_e2e'][0] / res['lin_cached'][0])
        print(f"round {r}: lin e2e epoch {res['lin_e2e'][0]:.3f} s, cached epoch {res['lin_cached'][0]:.4f} s (cache {res['lin_cached'][1]:.2f} s), "
              f"ratio {rows['ratio'][-1]:.1f}x", flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    ten = 10 * med['lin_e2e'] / (med['cache_s'] + 10 * med['lin_cached'])
    its = {}
    for net in ('alex', 'squeeze', 'vgg'):
        for par in ('scratch', 'tune'):
            s = statistics.median(train_iter(net, par, trn, val, dev, tmp, a) for _ in range(a.rounds))
            its[f'{par}_{net}'] = {'s_per_iter': s, 'epoch_s_for_n_train': s * -(-a.n_train // 50)}
            print(f"{par} {net}: {s:.3f} s / iteration of 50 triplets", flush=True)
    out = {'what': 'lin epoch time, cached features vs trunk every step; scratch/tune seconds per iteration (batch 50, 64x64); synthetic judgments, random trunk weights',
           'device': str(dev), 'threads': a.threads, 'platform': platform.platform(), 'torch': torch.__version__, 'cuda': torch.cuda.get_device_name() if dev.type == 'cuda' else None,
           'n_train': a.n_train, 'n_val': a.n_val, 'rounds': a.rounds, 'make_2afc_s': round(make_s, 2),
           'lin_epoch_s': {'e2e_median': med['lin_e2e'], 'cached_median': med['lin_cached'], 'per_round_e2e': rows['lin_e2e'], 'per_round_cached': rows['lin_cached']},
           'cache_build_s_median': med['cache_s'], 'ratio_epoch_e2e_over_cached_median': med['ratio'], 'ratio_per_round': rows['ratio'],
           'ratio_10_epochs_incl_cache': ten, 'goal_ratio': 10, 'scratch_tune': its,
           'command': 'python benchmarks/twoafc.py ' + ' '.join(f'--{k.replace("_", "-")} {v}' for k, v in vars(a).items() if k != 'out' and v is not None)}
    p = Path(a.out or Path(__file__).parent/'results'/('twoafc_cuda.json' if dev.type == 'cuda' else 'twoafc.json'))
    p.parent.mkdir(parents=True, exist_ok=True); p.write_text(json.dumps(out, indent=1))
    print(f"lin: cached epochs {med['ratio']:.1f}x faster (median of {a.rounds} paired rounds; {ten:.1f}x over 10 epochs with the cache build) -> {p}")


if __name__ == '__main__': main()
