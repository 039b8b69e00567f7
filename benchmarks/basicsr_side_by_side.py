#!/usr/bin/env python
"""restorekit's Gold stage side by side with Real-ESRGAN's own on-device pipeline (`RealESRNetModel.feed_data`), on
the same batches, in one run.

Peer code: a fresh checkout of Real-ESRGAN and of BasicSR (not vendored; `--realesrgan` / `--basicsr` or the
environment variables RK_REALESRGAN / RK_BASICSR name their folders). Their modules are loaded from those folders by
file: `realesrgan/models/realesrnet_model.py` (whose `feed_data` and `_dequeue_and_enqueue` are timed as shipped),
`basicsr/data/degradations.py`, `basicsr/data/transforms.py`, `basicsr/utils/{diffjpeg,img_process_util,registry}.py`.
Only its training-framework base class (`basicsr.models.sr_model.SRModel`, networks/losses/optimizers, none of which
`feed_data` touches) is replaced by an empty class, so the heavy `basicsr` package imports are skipped; the model
object is built without `__init__` and given what `__init__` would set (`DiffJPEG(differentiable=False)`, `USMSharp()`,
the options of `options/train_realesrnet_x4plus.yml`); one adapter makes DiffJPEG's output contiguous, without which
their `filter2D` fails on torch >= 2 (see `peer_model`). On a CPU device their `.cuda()` calls (the training-pair queue)
are redirected to the CPU for the run; on CUDA nothing is changed.

Same batches: 16x3x256x256 Kodak24 crops (shared data) or scikit-image crops; the blur and sinc kernels of each batch
are those of a restorekit plan for it (identity pulses where the plan has no blur/sinc), given to both pipelines —
in Real-ESRGAN they come from the dataset workers, so `feed_data` gets them ready-made, as `Degrader.apply` gets
its plan. Arms, per repeat (interleaved, synchronised around each call; medians over repeats after 2 warm-ups):
  realesrgan_feed_data   their `feed_data` (USM on, two stages, DiffJPEG, the final step, crop, queue of 160 = 10 batches of 16)
  restorekit_apply       `Degrader('realesrgan').apply(gt, plan)` with the host JPEG codec (libjpeg)
  restorekit_apply_dev   the same with `jpeg_codec='device'` (torchvision: nvJPEG on CUDA, libjpeg on the CPU)
  restorekit_call        `Degrader('realesrgan')(gt)`: the plan drawn in the step too
Differences in what is computed: Real-ESRGAN draws resize, noise type and JPEG once per batch (hence its queue);
restorekit per sample; Real-ESRGAN's JPEG is DiffJPEG (an approximation), restorekit's a real codec.
Writes benchmarks/results/basicsr_side_by_side[_<device>].json.

Usage: python benchmarks/basicsr_side_by_side.py [--device cpu|cuda] [--repeats 10] [--realesrgan DIR] [--basicsr DIR]
"""
import argparse, contextlib, importlib.util, json, os, platform, random, statistics, sys, time, types, warnings
from pathlib import Path

import numpy as np
import torch
import yaml

from restorekit.degrade import Degrader, preset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from degrade import crops, sync

RESULTS = Path(__file__).resolve().parent/'results'


def _load(name:str, path:Path):
    "Import the file `path` as module `name` (its parent packages as empty namespaces: their __init__ does not run)."
    parts = name.split('.')
    for i in range(1, len(parts)):
        pkg = '.'.join(parts[:i])
        if pkg not in sys.modules: m = types.ModuleType(pkg); m.__path__ = []; sys.modules[pkg] = m
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec); sys.modules[name] = mod
    spec.loader.exec_module(mod)
    if len(parts) > 1: setattr(sys.modules['.'.join(parts[:-1])], parts[-1], mod)
    return mod


def peer_model(resr:Path, bsr:Path, dev):
    "Real-ESRGAN's RealESRNetModel with what its `__init__` sets for `feed_data`, loaded from the peer checkouts."
    b = bsr/'basicsr'
    deg = _load('basicsr.data.degradations', b/'data/degradations.py')
    tr = _load('basicsr.data.transforms', b/'data/transforms.py')
    dj = _load('basicsr.utils.diffjpeg', b/'utils/diffjpeg.py')
    ip = _load('basicsr.utils.img_process_util', b/'utils/img_process_util.py')
    reg = _load('basicsr.utils.registry', b/'utils/registry.py')
    utils = sys.modules['basicsr.utils']; utils.DiffJPEG, utils.USMSharp = dj.DiffJPEG, ip.USMSharp
    sr = types.ModuleType('basicsr.models.sr_model')
    class SRModel:   # the training framework's base class: networks, losses, optimisers; feed_data uses none of it
        def __init__(self, opt): self.opt = opt
    sr.SRModel = SRModel
    sys.modules.setdefault('basicsr.models', types.ModuleType('basicsr.models')).__path__ = []
    sys.modules['basicsr.models.sr_model'] = sr
    mod = _load('realesrgan_models_realesrnet_model', resr/'realesrgan/models/realesrnet_model.py')
    opt = yaml.safe_load((resr/'options/train_realesrnet_x4plus.yml').read_text())
    m = mod.RealESRNetModel.__new__(mod.RealESRNetModel)
    m.opt, m.device, m.is_train = opt, dev, True
    jpeger = dj.DiffJPEG(differentiable=False).to(dev)
    # DiffJPEG returns a permuted (channels-last) tensor; on torch >= 2 the reflect pad in their filter2D keeps that
    # layout and its `.view` then fails: the one adapter here makes the output contiguous (a copy, timed with them)
    m.jpeger = lambda x, quality: jpeger(x, quality=quality).contiguous()
    m.usm_sharpener = ip.USMSharp().to(dev)
    m.queue_size = 160       # their 180 is for batches of 12; a multiple of 16 here
    return m, opt


@contextlib.contextmanager
def cuda_calls_to(dev):
    "On a CPU run, `.cuda()` (hard-coded in their queue) moves to `dev` instead."
    if dev.type == 'cuda': yield; return
    old = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self.to(dev)
    try: yield
    finally: torch.Tensor.cuda = old


def kernels_of(plan, name, K=21):
    "The `(B,K,K)` kernels of a plan's step `name`, identity pulses where a sample has none."
    pulse = torch.zeros(K, K); pulse[K // 2, K // 2] = 1
    out = []
    for p in plan:
        k = p.get(f'_k.{name}')
        if k is None: out.append(pulse); continue
        k = k.float(); r = (K - k.shape[-1]) // 2
        out.append(torch.nn.functional.pad(k, (r, r, r, r)) if r > 0 else k)
    return torch.stack(out)


def main(device='cpu', repeats=10, realesrgan=None, basicsr=None, batch=16, size=256, seed=0):
    resr = Path(realesrgan or os.environ.get('RK_REALESRGAN', ''))
    bsr = Path(basicsr or os.environ.get('RK_BASICSR', ''))
    for p, what in ((resr/'realesrgan/models/realesrnet_model.py', '--realesrgan'), (bsr/'basicsr/data/degradations.py', '--basicsr')):
        if not p.is_file(): raise SystemExit(f"{what}: {p} not found; point it at a checkout (git clone https://github.com/"
                                             f"{'xinntao/Real-ESRGAN' if what == '--realesrgan' else 'XPixelGroup/BasicSR'})")
    dev = torch.device(device)
    torch.set_num_threads(os.cpu_count() or 1)
    warnings.filterwarnings('ignore')
    hr, src = crops(batch, size)
    hr = hr.to(dev)
    model, opt = peer_model(resr, bsr, dev)
    cfg = preset('realesrgan', scale=opt['scale'])
    plans = [Degrader(cfg, seed=seed + i).plan(batch, size, size) for i in range(repeats + 2)]
    data = [dict(gt=hr, kernel1=kernels_of(p, 'stage1').to(dev), kernel2=kernels_of(p, 'stage2').to(dev),
                 sinc_kernel=kernels_of(p, 'final').to(dev)) for p in plans]
    rk_host, rk_dev = Degrader(cfg, seed=seed), Degrader(cfg, seed=seed, jpeg_codec='device')
    arms = {'realesrgan_feed_data': lambda i: model.feed_data(data[i]),
            'restorekit_apply': lambda i: rk_host.apply(hr, plans[i]),
            'restorekit_apply_dev': lambda i: rk_dev.apply(hr, plans[i]),
            'restorekit_call': lambda i: Degrader(cfg, seed=seed + i)(hr)}
    ts = {a: [] for a in arms}
    random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)
    with cuda_calls_to(dev):
        for i in range(repeats + 2):
            for a in (list(arms) if i % 2 else list(arms)[::-1]):
                sync(dev); t0 = time.perf_counter(); arms[a](i); sync(dev)
                if i >= 2: ts[a].append(time.perf_counter() - t0)
    med = {a: statistics.median(v) for a, v in ts.items()}
    ref = med['realesrgan_feed_data']
    res = dict(benchmark="restorekit Gold vs Real-ESRGAN's RealESRNetModel.feed_data, same batches", device=str(dev),
               batch=batch, size=size, scale=opt['scale'], source=src, repeats=repeats,
               peers=dict(realesrgan=str(resr), basicsr=str(bsr)),
               arms={a: dict(ms_per_batch=round(med[a] * 1e3, 1), ms_all=[round(t * 1e3, 1) for t in ts[a]],
                             speed_vs_feed_data=round(ref / med[a], 2)) for a in arms},
               machine=dict(cpus=os.cpu_count(), torch=torch.__version__, python=platform.python_version(),
                            gpu=torch.cuda.get_device_name() if dev.type == 'cuda' else None))
    for a in arms: print(f"{a:22s} {med[a] * 1e3:8.1f} ms/batch  ({ref / med[a]:.2f}x feed_data's speed)")
    out = RESULTS/('basicsr_side_by_side.json' if dev.type == 'cpu' else f'basicsr_side_by_side_{dev.type}.json')
    out.write_text(json.dumps(res, indent=1) + '\n'); print(f"wrote {out}")
    return res


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cpu'); ap.add_argument('--repeats', type=int, default=10)
    ap.add_argument('--realesrgan'); ap.add_argument('--basicsr')
    main(**vars(ap.parse_args()))
