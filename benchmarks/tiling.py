#!/usr/bin/env python
"""Tiled inference cost: tiled/untiled wall-time ratio at 1024² and peak memory at 1024² and 4096², scale 2.

The ratio is the median over `--repeats` interleaved pairs (untiled, tiled with tile 256, overlap 16, hann) of one
1024x1024 x2 restore. Peak memory is measured in a fresh subprocess per configuration: peak RSS
(VmHWM of /proc/self/status; `ru_maxrss` elsewhere) on the CPU, `torch.cuda.max_memory_allocated` (and peak RSS) on CUDA. On the CPU
the 4096² input runs tiled only; the untiled activation memory it would need is estimated from activation sizes
(`bytes_per_pixel`). The stated bound: peak RSS <= RSS after start-up + input + output buffers + 2x the estimated
activations of one batch of tiles. The default model is the full EDSR-baseline x2 (16 blocks x 64 channels); on a
CPU that is ~1.4 MMAC per input pixel (23 TMAC at 4096²), so the CPU default is a reduced EDSR-baseline
(`--feats 16 --blocks 4`), stated in the JSON. Writes benchmarks/results/tiling.json (tiling_cuda.json on CUDA).

Usage: python benchmarks/tiling.py [--device cpu|cuda] [--repeats 5] [--feats N] [--blocks N] [--sizes 1024 4096]
"""
import argparse, json, os, platform, resource, statistics, subprocess, sys, time
from pathlib import Path

import torch

from restorekit.inference import restore, bytes_per_pixel
from restorekit.models import create_model

RESULTS = Path(__file__).resolve().parent/'results'
TILE, OVERLAP, BATCH_TILES = 256, 16, 4


def sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()


def make_model(a, dev):
    return create_model('edsr_baseline', 2, seed=0, n_feats=a.feats, n_blocks=a.blocks).to(dev).eval()


def rss_mb():
    "Peak RSS of this process in MiB: VmHWM (reset by exec, unlike ru_maxrss, which a child inherits from its forked parent)."
    try:
        for line in open('/proc/self/status'):
            if line.startswith('VmHWM:'): return int(line.split()[1]) / 1024
    except OSError: pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB


def child(a):
    "One configuration in this (fresh) process: print a JSON line with its peak memory."
    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = make_model(a, dev)
    x = torch.rand(3, a.size, a.size)
    restore(model, x[:, :64, :64], tile=None)                          # warm-up: libraries, allocator
    base = rss_mb()
    if dev.type == 'cuda': torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    y = restore(model, x, tile=TILE if a.tiled else None, overlap=OVERLAP, batch_tiles=BATCH_TILES)
    sync(dev)
    r = dict(size=a.size, tiled=bool(a.tiled), seconds=time.perf_counter() - t0, rss_base_mb=base, peak_rss_mb=rss_mb(),
             out_shape=list(y.shape))
    if dev.type == 'cuda': r['cuda_max_allocated_mb'] = torch.cuda.max_memory_allocated() / 2**20
    print('RESULT ' + json.dumps(r))


def run_child(a, size, tiled):
    cmd = [sys.executable, __file__, '--child', '--device', a.device, '--feats', str(a.feats), '--blocks', str(a.blocks),
           '--size', str(size)] + (['--tiled'] if tiled else [])
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode: raise RuntimeError(f"child {size} tiled={tiled} failed:\n{p.stderr[-3000:]}")
    return json.loads([l for l in p.stdout.splitlines() if l.startswith('RESULT ')][-1][7:])


def main(a):
    dev = torch.device(a.device)
    model = make_model(a, dev)
    n = 1024
    x = torch.rand(3, n, n, generator=torch.Generator().manual_seed(0))
    bpp = bytes_per_pixel(model, 3, dev)
    res = dict(benchmark='tiled inference', device=str(dev), torch=torch.__version__, platform=platform.platform(),
               cpu_threads=torch.get_num_threads(), model=dict(arch='edsr_baseline', scale=2, n_feats=a.feats, n_blocks=a.blocks,
               full_edsr_baseline=(a.feats, a.blocks) == (64, 16)), tile=TILE, overlap=OVERLAP, blend='hann',
               batch_tiles=BATCH_TILES, repeats=a.repeats, est_activation_bytes_per_input_pixel=bpp)
    # wall-time ratio at 1024², interleaved pairs
    restore(model, x, tile=None); restore(model, x, tile=TILE, overlap=OVERLAP, batch_tiles=BATCH_TILES)   # warm-up
    tu, tt = [], []
    for _ in range(a.repeats):
        sync(dev); t0 = time.perf_counter(); restore(model, x, tile=None); sync(dev); tu.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); restore(model, x, tile=TILE, overlap=OVERLAP, batch_tiles=BATCH_TILES); sync(dev)
        tt.append(time.perf_counter() - t0)
    res['time_1024'] = dict(untiled_s=statistics.median(tu), tiled_s=statistics.median(tt),
                            ratio=statistics.median(tt) / statistics.median(tu), goal=1.15, untiled_all=tu, tiled_all=tt)
    print(json.dumps(res['time_1024']), flush=True)
    # peak memory, a fresh process per configuration
    mem = {}
    for size in a.sizes:
        inp, outb = 3 * size * size * 4, 3 * (2 * size) ** 2 * 4
        act_tile = bpp * TILE * TILE * BATCH_TILES
        e = dict(input_mb=inp / 2**20, output_mb=outb / 2**20, est_tile_batch_activations_mb=act_tile / 2**20,
                 est_untiled_activations_mb=bpp * size * size / 2**20)
        untiled_ok = dev.type == 'cuda' or bpp * size * size < 4 * 2**30
        for tiled in ([False] if untiled_ok else []) + [True]:
            r = run_child(a, size, tiled)
            key = 'tiled' if tiled else 'untiled'
            e[key] = r
            if tiled:
                bound = r['rss_base_mb'] + (inp + outb + 2 * act_tile) / 2**20
                e['bound_rss_mb'] = bound
                e['within_bound'] = r['peak_rss_mb'] <= bound
            print(size, key, json.dumps(r), flush=True)
        if not untiled_ok: e['untiled'] = 'skipped: estimated activations too large for this machine'
        mem[str(size)] = e
    res['memory'] = mem
    res['bound'] = ("tiled peak RSS <= RSS after start-up + input (3·H·W·4 B) + output (3·(2H)·(2W)·4 B) + 2 x the estimated "
                    "activations of one batch of tiles (bytes_per_pixel · tile² · batch_tiles): grows with the tile, not the image "
                    "beyond its input/output buffers")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS/('tiling.json' if dev.type == 'cpu' else f'tiling_{dev.type}.json')
    out.write_text(json.dumps(res, indent=1))
    print('wrote', out)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cpu')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--feats', type=int, default=None, help='EDSR channels (default 64 on CUDA, 16 on CPU)')
    p.add_argument('--blocks', type=int, default=None, help='EDSR residual blocks (default 16 on CUDA, 4 on CPU)')
    p.add_argument('--sizes', type=int, nargs='+', default=[1024, 4096])
    p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--tiled', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--size', type=int, default=1024, help=argparse.SUPPRESS)
    a = p.parse_args()
    cpu = torch.device(a.device).type == 'cpu'
    a.feats = a.feats or (16 if cpu else 64)
    a.blocks = a.blocks or (4 if cpu else 16)
    child(a) if a.child else main(a)
