"""Does `learn.fine_tune` keep (and adapt) a pretrained restoration model?

The official IMDN x2 weights (trained on DIV2K, bicubic) are fine-tuned with `RestorationLearner.fine_tune` on Silver
patches of the photos bundled with scikit-image, and scored on Set5 (whole images, PSNR on Y, border 2) before and
after. Two learning-rate settings, paired (same seeds, same patches, same degradations):
  - `fastai`:     fastai's `Learner.fine_tune` defaults (base_lr=2e-3, lr_mult=100)
  - `restorekit`: `RestorationLearner.fine_tune` defaults (base_lr = learn.lr / 2 = 1e-4, lr_mult=10)
and two degradations: `bicubic` (the weights' own task: fine-tuning should not hurt) and `light` (blur + JPEG: a new
task, where fine-tuning should help). Needs ../shared/data (Set5, weights_IMDN); skips otherwise.

    python experiments/finetune_defaults.py                # 3 seeds, 150 iterations (results/finetune_defaults.json)
    python experiments/finetune_defaults.py --epoch-len 3 --epochs 1 --out experiments/results/finetune_defaults_short.json
                                                           # 3 seeds, 6 iterations: the first steps
    python experiments/finetune_defaults.py --smoke        # 1 seed, 6 iterations of 4 64-px patches, nothing written (CI-sized)
"""
import argparse, json, math, statistics, sys, tempfile, time, warnings
from pathlib import Path

import torch

from restorekit.core import sample_images, shared_data
from restorekit.silver import build_silver, SilverStore
from restorekit.learner import restoration_dls, restoration_learner, default_metrics
from restorekit.losses import RestorationLoss
from restorekit.models import create_model, load_weights

FASTAI = dict(base_lr=2e-3, lr_mult=100)   # fastai.callback.schedule.fine_tune's defaults


def set5_psnr(learn, dl=None) -> float:
    "Mean PSNR (Y) of the validated (EMA) weights on the validation set (or on `dl`)."
    return float(learn.validate(dl=dl)[1])


_BEFORE = {}   # (degrade, seed) -> Set5 PSNR of the pretrained model

def run(silver, valid, degrade, setting, seed, epoch_len, epochs, smoke=False):
    kw = dict(bs=4, patch=64) if smoke else dict(bs=8, patch=96)   # smoke: the machinery, not the claim
    dls = restoration_dls(silver, valid, scale=2, degrade=degrade, epoch_len=epoch_len, seed=seed, device='cpu', **kw)
    full = dls.valid
    if smoke:   # fastai validates after each epoch: on one image in a smoke run; before/after are still the whole of Set5
        dls = restoration_dls(silver, valid[:1], scale=2, degrade=degrade, epoch_len=epoch_len, seed=seed, device='cpu', **kw)
    model = load_weights(create_model('imdn', 2), shared_data()/'weights_IMDN'/'IMDN_x2.pth')
    learn = restoration_learner(dls, model, loss=RestorationLoss(l1=1, ms_ssim=0, lpips=0), metrics=default_metrics(2, lpips=False))
    learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == 'ProgressCallback']); learn.logger = lambda *a, **k: None
    key = (degrade, seed)   # the pretrained model on the same validation pairs: the same figure for both settings
    if key not in _BEFORE: _BEFORE[key] = set5_psnr(learn, full)
    before = _BEFORE[key]
    torch.manual_seed(seed)
    learn.fine_tune(epochs, **(FASTAI if setting == 'fastai' else {}))
    return before, set5_psnr(learn, full)


def ci95(xs):
    if len(xs) < 2: return None
    m, s = statistics.mean(xs), statistics.stdev(xs)
    t = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776}.get(len(xs), 2.0)
    return [m - t * s / math.sqrt(len(xs)), m + t * s / math.sqrt(len(xs))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--seeds', type=int, default=3)
    ap.add_argument('--epoch-len', type=int, default=50)
    ap.add_argument('--epochs', type=int, default=2)
    ap.add_argument('--smoke', action='store_true')
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'finetune_defaults.json'))
    a = ap.parse_args()
    root = shared_data()
    if root is None or not (root/'weights_IMDN'/'IMDN_x2.pth').is_file(): print('SKIP: ../shared/data (IMDN weights, Set5) not found'); return
    if a.smoke: a.seeds, a.epoch_len, a.epochs = 1, 3, 1
    torch.set_num_threads(1); warnings.filterwarnings('ignore')
    tmp = Path(tempfile.mkdtemp())
    build_silver(sample_images(), tmp/'silver', patch=192, max_per_image=16, seed=0, n_workers=0, verbose=False)
    silver, valid = SilverStore(tmp/'silver'), sorted((root/'Set5'/'HR').glob('*.png'))
    res = {'what': 'Set5 PSNR (Y, dB) of IMDN x2 (official weights) before/after fine_tune', 'epoch_len': a.epoch_len,
           'epochs': a.epochs, 'freeze_epochs': 1, 'seeds': a.seeds, 'runs': []}
    t0 = time.time()
    for degrade in ('bicubic', 'light'):
        for seed in range(a.seeds):
            for setting in ('fastai', 'restorekit'):
                b, f = run(silver, valid, degrade, setting, seed, a.epoch_len, a.epochs, a.smoke)
                res['runs'].append(dict(degrade=degrade, setting=setting, seed=seed, before=b, after=f, change=f - b))
                print(f"{degrade:8s} {setting:10s} seed {seed}: {b:.3f} -> {f:.3f} dB ({f - b:+.3f})", flush=True)
    summ = {}
    for degrade in ('bicubic', 'light'):
        for setting in ('fastai', 'restorekit'):
            ch = [r['change'] for r in res['runs'] if r['degrade'] == degrade and r['setting'] == setting]
            summ[f'{degrade}/{setting}'] = dict(mean_change=statistics.mean(ch), ci95=ci95(ch))
        paired = [r2['after'] - r1['after'] for r1, r2 in zip(
            [r for r in res['runs'] if r['degrade'] == degrade and r['setting'] == 'fastai'],
            [r for r in res['runs'] if r['degrade'] == degrade and r['setting'] == 'restorekit'])]
        summ[f'{degrade}/restorekit-minus-fastai'] = dict(mean=statistics.mean(paired), ci95=ci95(paired))
    res['summary'], res['seconds'] = summ, round(time.time() - t0, 1)
    res['command'] = 'python experiments/finetune_defaults.py ' + ' '.join(sys.argv[1:])
    print(json.dumps(summ, indent=1))
    if not a.smoke:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == '__main__': main()
