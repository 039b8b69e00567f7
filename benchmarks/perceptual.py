#!/usr/bin/env python
"""LPIPS speed and memory on the CPU: restorekit's `LPIPS` against the `lpips` package, same weights, same inputs.

For LPIPS-alex and LPIPS-vgg (v0.1, official heads, a random trunk shared by both implementations: ImageNet
weights need a download) and batches of 1 and 16 images of 3x256x256:
- forward time (metric use: under `torch.no_grad()`) and forward+backward time (loss use: the gradient of the
  summed distance with respect to `x`, the target `y` fixed), medians over repeats, the two implementations
  interleaved (order alternating) in the same process;
- peak memory of one call, each measurement in a fresh subprocess: build the model and inputs, run the call once
  (warm-up), then reset the kernel's peak-RSS counter (`/proc/self/clear_refs` <- 5), record the resident set, run
  the call again and report `VmHWM - VmRSS` (the call's peak above what it started with). glibc's mmap threshold is
  pinned (MALLOC_MMAP_THRESHOLD_) so freed buffers go back to the kernel in both implementations alike.
Ratios are restorekit / reference (below 1: restorekit is faster / smaller). The distances of both are compared too.
restorekit's forward is also timed with the other choice of trunk pass: for a batch of 1 (by default x and y go
through as one concatenated batch) separately, for a batch of 16 (by default separately) concatenated; set with
`LPIPS.batch_concat_max` and reported as `restorekit_alt`.
Also times `pytorch_msssim.ms_ssim` on a 16x3x128x128 batch (forward, and forward+backward of 1 - MS-SSIM):
win_size=7, because 5 scales at the default win_size=11 need a side > 160 (pytorch_msssim asserts
side > (win_size - 1) * 2**4), and 128 > 96 holds for 7.

Usage: python benchmarks/perceptual.py [--repeats 5] [--nets alex,vgg] [--batches 1,16] [--size 256]
Writes benchmarks/results/perceptual.json.
"""
import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from restorekit.core import load_image, sample_images, shared_data
from restorekit.perceptual import LPIPS

RESULTS = Path(__file__).resolve().parent/'results'
MALLOC_ENV = {'MALLOC_MMAP_THRESHOLD_': '131072', 'MALLOC_TRIM_THRESHOLD_': '131072'}


def crops(n, size, seed=0):
    "`n` crops of real photos and a distorted copy (Gaussian noise + a shift), as two float batches in [0,1]."
    data = shared_data()
    files = sorted((data/'Kodak24').glob('*.png')) if data and (data/'Kodak24').is_dir() else sample_images()
    out = []
    while len(out) < n:
        for p in files:
            im = load_image(p)
            H, W = im.shape[-2:]
            if min(H, W) < size: continue
            y0, x0 = (H - size) // 2, (W - size) // 2 + (len(out) // len(files)) * 7
            out.append(im[:, y0:y0 + size, x0:x0 + size])
            if len(out) == n: break
    x = torch.stack(out)
    g = torch.Generator().manual_seed(seed)
    y = (x.roll(2, -1) + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return x.contiguous(), y.contiguous()


def models(net, seed=0):
    "The reference `lpips.LPIPS` with a seeded random trunk, and restorekit's `LPIPS` with the same trunk and heads."
    import lpips
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')   # torchvision's `pretrained=` deprecation inside lpips
        ref = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    trunk = {k.split('.', 1)[1]: v for k, v in ref.net.state_dict().items()}   # 'slice2.3.weight' -> '3.weight'
    return ref, LPIPS(net, trunk=trunk)


def call(impl, model, x, y, mode):
    "One measured call: the forward under no_grad, or forward+backward to `x`."
    if mode == 'forward':
        with torch.no_grad():
            return model(x, y, normalize=True) if impl == 'reference' else model(x, y)
    xg = x.detach().clone().requires_grad_()
    d = model(xg, y, normalize=True) if impl == 'reference' else model(xg, y)
    d.sum().backward()
    return xg.grad


def _status(key):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key): return int(line.split()[1]) / 1024   # MiB
    raise RuntimeError(f'{key} not in /proc/self/status')


def mem_child(impl, net, batch, mode, size, threads):
    "Subprocess body: print the peak memory (MiB) of one call above the memory held before it."
    torch.set_num_threads(threads)
    ref, rk = models(net)
    model = ref if impl == 'reference' else rk
    if impl == 'restorekit_alt': model.batch_concat_max = 0 if batch <= LPIPS.batch_concat_max else batch
    if impl == 'reference': del rk
    else: del ref
    x, y = crops(batch, size)
    call(impl, model, x, y, mode)                 # warm-up: lazy initialisation, oneDNN primitives
    gc.collect()
    with open('/proc/self/clear_refs', 'w') as f: f.write('5')   # reset VmHWM to the current RSS
    base = _status('VmRSS:')
    out = call(impl, model, x, y, mode)
    peak = _status('VmHWM:')
    del out
    print(json.dumps({'peak_mib': round(peak - base, 1), 'base_mib': round(base, 1)}))


def peak_memory(impl, net, batch, mode, size, threads):
    env = dict(os.environ, **MALLOC_ENV)
    r = subprocess.run([sys.executable, __file__, '--_mem', impl, net, str(batch), mode, str(size), str(threads)],
                       capture_output=True, text=True, env=env, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])['peak_mib']


def interleaved(fns, repeats, warmup=1):
    "Median seconds of each of `fns` (a dict), run alternately, the order reversed every other repeat."
    names = list(fns)
    for _ in range(warmup):
        for n in names: fns[n]()
    ts = {n: [] for n in names}
    for r in range(repeats):
        for n in (names if r % 2 == 0 else names[::-1]):
            gc.collect()
            t0 = time.perf_counter(); fns[n](); ts[n].append(time.perf_counter() - t0)
    return {n: {'median_s': round(statistics.median(v), 4), 'all_s': [round(t, 4) for t in v]} for n, v in ts.items()}


def bench_msssim(repeats, threads):
    from pytorch_msssim import ms_ssim
    x, y = crops(16, 128)
    def fwd():
        with torch.no_grad(): return ms_ssim(x, y, data_range=1, win_size=7)
    def fwd_bwd():
        xg = x.clone().requires_grad_()
        (1 - ms_ssim(xg, y, data_range=1, win_size=7)).backward()
    res = interleaved({'forward': fwd, 'forward+backward': fwd_bwd}, repeats)
    return dict(shape=[16, 3, 128, 128], call='pytorch_msssim.ms_ssim(x, y, data_range=1, win_size=7)',
                note='win_size=7: 5 scales at win_size=11 need a side > 160; 128 > (7-1)*16 = 96',
                value=round(float(fwd()), 6), **{k: v for k, v in res.items()})


def main(repeats=5, nets=('alex', 'vgg'), batches=(1, 16), size=256, out=RESULTS/'perceptual.json'):
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    res = {'benchmark': 'LPIPS speed and peak memory, restorekit vs the lpips package (CPU)',
           'machine': {'platform': platform.platform(), 'processor': platform.processor() or platform.machine(),
                        'cpu_count': threads, 'torch_threads': torch.get_num_threads(), 'python': platform.python_version(),
                        'torch': torch.__version__, 'lpips': _version('lpips'), 'pytorch_msssim': _version('pytorch_msssim'),
                        'load_average_at_start': list(os.getloadavg())},
           'input_size': size, 'repeats': repeats,
           'time_method': 'medians over repeats; the implementations interleaved in one process, order alternating; '
                          'forward under torch.no_grad(); forward+backward: d(sum of distances)/dx, y fixed',
           'memory_method': 'fresh subprocess per measurement; after one warm-up call, /proc/self/clear_refs <- 5 '
                            'resets VmHWM; peak = VmHWM - VmRSS around one call (MiB); glibc '
                            + ', '.join(f'{k}={v}' for k, v in MALLOC_ENV.items()),
           'weights': 'random trunk (seeded) copied from lpips.LPIPS(pnet_rand=True) into restorekit; official v0.1 heads in both',
           'lpips': {}}
    for net in nets:
        ref, rk = models(net)
        alt = LPIPS(net, trunk=rk.trunk.state_dict())
        for batch in batches:
            x, y = crops(batch, size)
            alt.batch_concat_max = 0 if batch <= LPIPS.batch_concat_max else batch   # the other trunk pass
            with torch.no_grad(): diff = (rk(x, y) - ref(x, y, normalize=True).flatten()).abs().max().item()
            key = f'{net}_{batch}x3x{size}x{size}'
            entry = res['lpips'][key] = {'net': net, 'batch': batch, 'max_abs_diff_vs_reference': diff}
            # very slow configurations (vgg, batch 16 on a few cores) get fewer repeats
            reps = repeats if not (net == 'vgg' and batch >= 16) else max(3, repeats // 2)
            for mode in ('forward', 'forward+backward'):
                impls = {'reference': ref, 'restorekit': rk} | ({'restorekit_alt': alt} if mode == 'forward' else {})
                fns = {n: (lambda n=n, m=m, mode=mode: call(n, m, x, y, mode)) for n, m in impls.items()}  # noqa: B023 (x, y: run now)
                t = interleaved(fns, reps)
                mem = {impl: peak_memory(impl, net, batch, mode, size, threads) for impl in fns}
                e = entry[mode] = {'repeats': reps, 'time': t, 'peak_mib': mem,
                                   'time_ratio': round(t['restorekit']['median_s'] / t['reference']['median_s'], 3),
                                   'memory_ratio': round(mem['restorekit'] / mem['reference'], 3)}
                if mode == 'forward':
                    e['alt_time_ratio'] = round(t['restorekit_alt']['median_s'] / t['reference']['median_s'], 3)
                    e['alt_memory_ratio'] = round(mem['restorekit_alt'] / mem['reference'], 3)
                print(f"{key:22s} {mode:17s} time {t['restorekit']['median_s']:7.3f}s vs {t['reference']['median_s']:7.3f}s "
                      f"(x{e['time_ratio']:.2f})  peak {mem['restorekit']:8.1f} vs {mem['reference']:8.1f} MiB (x{e['memory_ratio']:.2f})"
                      + (f"  [other trunk pass: time x{e['alt_time_ratio']:.2f}, memory x{e['alt_memory_ratio']:.2f}]" if mode == 'forward' else ''),
                      flush=True)
    res['msssim'] = bench_msssim(repeats, threads)
    print(f"ms_ssim 16x3x128x128: forward {res['msssim']['forward']['median_s']:.3f}s, "
          f"forward+backward {res['msssim']['forward+backward']['median_s']:.3f}s")
    res['load_average_at_end'] = list(os.getloadavg())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print('wrote', out)
    return res


def _version(pkg):
    from importlib.metadata import PackageNotFoundError, version
    try: return version(pkg)
    except PackageNotFoundError: return None


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == '--_mem':
        impl, net, batch, mode, size, threads = sys.argv[2:8]
        mem_child(impl, net, int(batch), mode, int(size), int(threads))
        sys.exit()
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--nets', default='alex,vgg')
    ap.add_argument('--batches', default='1,16')
    ap.add_argument('--size', type=int, default=256)
    ap.add_argument('--out', type=Path, default=RESULTS/'perceptual.json')
    a = ap.parse_args()
    main(a.repeats, tuple(a.nets.split(',')), tuple(int(b) for b in a.batches.split(',')), a.size, a.out)
