#!/usr/bin/env python
"""Random-access patch reads/s: the Silver store vs decoding the same patches from PNG files, in the same run.

Source: Kodak24 from the shared data when present (768x512 photos), else the photos bundled with scikit-image.
Both sides read the same randomly chosen patches (same seed) with a warm page cache, and return the same thing,
a float32 (3, P, P) tensor in [0, 1]. A second baseline decodes the PNGs with bare OpenCV (no checks, uint8),
the fastest a PNG-file store could be. Reports medians over repeats and writes benchmarks/results/silver.json.

Usage: python benchmarks/silver.py [--patch 256] [--reads 2000] [--repeats 5]
"""
import argparse, json, os, platform, shutil, statistics, sys, tempfile, time
from pathlib import Path

import cv2
import numpy as np
import torch

from restorekit.core import load_image, save_image, shared_data, sample_images
from restorekit.silver import SilverStore, build_silver

OUT = Path(__file__).resolve().parent/'results'/'silver.json'


def timed_reads(read, idx) -> float:
    "Reads per second for `read(i)` over the indices `idx`."
    t0 = time.perf_counter()
    for i in idx: read(int(i))
    return len(idx) / (time.perf_counter() - t0)


def main(patch=256, reads=2000, repeats=5, seed=0):
    torch.set_num_threads(os.cpu_count() or 1)
    data = shared_data()
    src, src_name = ((data/'Kodak24', 'Kodak24 (shared data)') if data and (data/'Kodak24').is_dir()
                     else (sample_images(), 'scikit-image sample photos'))
    work = Path(tempfile.mkdtemp(prefix='rk-bench-silver-'))
    try:
        t0 = time.perf_counter()
        rep = build_silver(src, work/'store', patch=patch, stride=patch // 2, verbose=False)
        build_s = time.perf_counter() - t0
        store = SilverStore(work/'store')
        raw = SilverStore(work/'store', dtype=torch.uint8)
        pngs = [work/'png'/f'{i:06d}.png' for i in range(len(store))]
        for i, p in enumerate(pngs): save_image(raw[i], p)
        idx = np.random.default_rng(seed).integers(0, len(store), reads)
        # warm-up: both sides fully in the page cache
        for i in range(len(store)): store.read(i); pngs[i].read_bytes()
        runs = {'store': [], 'png_load_image': [], 'png_cv2_uint8': []}
        for _ in range(repeats):
            runs['store'].append(timed_reads(store.__getitem__, idx))
            runs['png_load_image'].append(timed_reads(lambda i: load_image(pngs[i]), idx))
            runs['png_cv2_uint8'].append(timed_reads(lambda i: cv2.imread(str(pngs[i]), cv2.IMREAD_COLOR), idx))
        med = {k: statistics.median(v) for k, v in runs.items()}
        # check both sides read the same pixels
        for i in idx[:20]: assert torch.allclose(store[int(i)], load_image(pngs[int(i)]), atol=1e-6)
        res = dict(
            benchmark='silver random-access reads', source=src_name, patch=patch, n_patches=len(store),
            n_source_images=rep['n_ok'], reads_per_repeat=reads, repeats=repeats, page_cache='warm',
            reads_per_s_median={k: round(v, 1) for k, v in med.items()},
            reads_per_s_all={k: [round(x, 1) for x in v] for k, v in runs.items()},
            ratio_store_vs_png_load_image=round(med['store'] / med['png_load_image'], 2),
            ratio_store_vs_png_cv2=round(med['store'] / med['png_cv2_uint8'], 2),
            bytes_store=(work/'store'/'patches.u8').stat().st_size, bytes_png=sum(p.stat().st_size for p in pngs),
            build_seconds=round(build_s, 2),
            machine=dict(cpus=os.cpu_count(), torch_threads=torch.get_num_threads(), python=platform.python_version(),
                         torch=torch.__version__, platform=platform.platform()),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=1) + '\n')
    print(json.dumps({k: res[k] for k in ('source', 'n_patches', 'reads_per_s_median', 'ratio_store_vs_png_load_image',
                                          'ratio_store_vs_png_cv2', 'bytes_store', 'bytes_png')}, indent=1))
    print(f"wrote {OUT}")
    return res


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--patch', type=int, default=256)
    ap.add_argument('--reads', type=int, default=2000)
    ap.add_argument('--repeats', type=int, default=5)
    main(**vars(ap.parse_args()))
