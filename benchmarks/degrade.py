#!/usr/bin/env python
"""Gold degradation throughput: patches/s for a 16x3x256x256 batch through the presets, with a per-stage split.

Same-run baselines calibrate the machine: one per-sample 21x21 depthwise blur of the batch (the cost of a single
Real-ESRGAN blur done naively), bicubic x4 + Gaussian noise, and USM done the reference way (a full 2-D 51x51
convolution) against restorekit's separable USM. Input: 256x256 crops of Kodak24 (shared data) or of the bundled
sample photos. Repeat i uses a Degrader seeded with i, so every run (and every code version) times the same
workload. Reports medians over repeats; writes benchmarks/results/degrade.json (or degrade_<device>.json).

Usage: python benchmarks/degrade.py [--device cpu|cuda] [--repeats 10] [--batch 16] [--size 256]
"""
import argparse, json, os, platform, statistics, time
from pathlib import Path

import cv2
import torch
import torch.nn.functional as F

from restorekit.core import load_image, sample_images, shared_data
from restorekit.degrade import Degrader, preset, usm_sharpen, gaussian_kernel1d

RESULTS = Path(__file__).resolve().parent/'results'


def crops(n, size):
    "`n` distinct size x size crops of real photos, as a float batch."
    data = shared_data()
    files = sorted((data/'Kodak24').glob('*.png')) if data and (data/'Kodak24').is_dir() else sample_images()
    out = []
    for p in files:
        im = load_image(p)
        H, W = im.shape[-2:]
        for y in range(0, H - size + 1, size):
            for x in range(0, W - size + 1, size):
                out.append(im[:, y:y + size, x:x + size])
                if len(out) == n: return torch.stack(out), ('Kodak24' if data else 'scikit-image samples')
    raise RuntimeError('not enough image data for the batch')


def sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()


def bench(fn, dev, repeats, warmup=2):
    "Median seconds of `fn()` over `repeats` runs, and all runs."
    for _ in range(warmup): fn()
    ts = []
    for _ in range(repeats):
        sync(dev); t0 = time.perf_counter(); fn(); sync(dev); ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts


def main(device='cpu', repeats=10, batch=16, size=256, seed=0):
    dev = torch.device(device)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads); cv2.setNumThreads(threads)
    hr, src = crops(batch, size)
    hr = hr.to(dev)
    res = dict(benchmark='gold degradation throughput', device=str(dev), batch=batch, hr_size=size, source=src,
               repeats=repeats, presets={}, baselines={})
    for name, kw in (('realesrgan', dict(scale=4)), ('bicubic', dict(scale=4)), ('jpeg_heavy', dict(scale=1)),
                     ('bsrgan', dict(scale=4)), ('light', dict(scale=4))):
        cfg = preset(name, **kw)
        degs = iter([Degrader(cfg, seed=seed + i) for i in range(repeats + 2)])   # the same workload in every run
        med, ts = bench(lambda: next(degs)(hr), dev, repeats)
        deg = Degrader(cfg, seed=seed)
        prof = {}
        for _ in range(3): deg(hr, profile=prof)
        tot = sum(prof.values())
        res['presets'][name] = dict(scale=kw['scale'], patches_per_s=round(batch / med, 1), ms_per_batch=round(med * 1e3, 1),
                                    ms_all=[round(t * 1e3, 1) for t in ts],
                                    stage_share={k: round(v / tot, 3) for k, v in sorted(prof.items(), key=lambda kv: -kv[1])})
        print(f"{name:11s} x{kw['scale']}: {batch / med:8.1f} patches/s  ({med * 1e3:.1f} ms/batch)  slowest: "
              + ', '.join(f"{k} {v / tot:.0%}" for k, v in sorted(prof.items(), key=lambda kv: -kv[1])[:3]))
    # baselines, same run
    k = torch.rand(batch, 21, 21, device=dev); k /= k.sum((1, 2), keepdim=True)
    def depthwise():
        x = F.pad(hr.reshape(1, -1, size, size), (10, 10, 10, 10), mode='reflect')
        return F.conv2d(x, k.repeat_interleave(3, 0)[:, None], groups=3 * batch)
    def bicubic_noise():
        lq = F.interpolate(hr, scale_factor=0.25, mode='bicubic', antialias=True)
        return lq + torch.randn_like(lq) * 0.02
    g = gaussian_kernel1d(51).float().to(dev); g2 = torch.outer(g, g)
    def usm_2d():   # the reference implementation's way: a full 2-D 51x51 convolution, twice
        def blur(x): return F.conv2d(F.pad(x.reshape(-1, 1, size, size), (25,) * 4, mode='reflect'), g2[None, None]).reshape(x.shape)
        res_ = hr - blur(hr); m = (res_.abs() * 255 > 10).float(); s = blur(m)
        return s * (hr + 0.5 * res_).clamp(0, 1) + (1 - s) * hr
    for name, fn in (('depthwise_21x21_per_sample_blur', depthwise), ('bicubic_x4_plus_gaussian_noise', bicubic_noise),
                     ('usm_full_2d_51x51', usm_2d), ('usm_restorekit_separable', lambda: usm_sharpen(hr))):
        med, _ = bench(fn, dev, max(3, repeats // 2), warmup=1)
        res['baselines'][name] = dict(patches_per_s=round(batch / med, 1), ms_per_batch=round(med * 1e3, 1))
        print(f"baseline {name}: {batch / med:.1f} patches/s")
    r = res['presets']['realesrgan']['patches_per_s']
    res['ratios'] = dict(
        realesrgan_vs_one_depthwise_blur=round(r / res['baselines']['depthwise_21x21_per_sample_blur']['patches_per_s'], 3),
        usm_separable_speedup_vs_2d=round(res['baselines']['usm_restorekit_separable']['patches_per_s']
                                          / res['baselines']['usm_full_2d_51x51']['patches_per_s'], 1))
    res['goal'] = dict(realesrgan_x4_patches_per_s_at_least=100, met=r >= 100)
    res['machine'] = dict(cpus=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                          python=platform.python_version(), platform=platform.platform(),
                          gpu=torch.cuda.get_device_name() if dev.type == 'cuda' else None)
    out = RESULTS/('degrade.json' if dev.type == 'cpu' else f'degrade_{dev.type}.json')
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + '\n')
    print(f"wrote {out}")
    return res


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cpu'); ap.add_argument('--repeats', type=int, default=10)
    ap.add_argument('--batch', type=int, default=16); ap.add_argument('--size', type=int, default=256)
    main(**vars(ap.parse_args()))
