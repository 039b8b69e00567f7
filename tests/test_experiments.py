"""Smoke versions of the experiments in `experiments/` (CI runs these; the committed results come from full runs)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from restorekit.core import shared_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shared_data() is None or not (shared_data() / 'weights_IMDN' / 'IMDN_x2.pth').is_file(),
                    reason='needs ../shared/data (IMDN x2 weights and Set5)')
def test_finetune_defaults_smoke():
    r = subprocess.run([sys.executable, str(ROOT / 'experiments' / 'finetune_defaults.py'), '--smoke'],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [l for l in r.stdout.splitlines() if ' seed 0: ' in l]
    assert len(lines) == 4, r.stdout
    before = {float(l.split(': ')[1].split(' -> ')[0]) for l in lines if l.startswith('bicubic')}
    assert len(before) == 1 and abs(before.pop() - 38.00) < 0.05    # IMDN x2 on Set5: the published 38.00 dB


def _eco_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location('eco_experiment', ROOT / 'experiments' / 'eco.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def test_eco_statistics():
    "The t-interval on a worked example, and the paired summary on hand-made curves."
    eco = _eco_module()
    r = eco.t_ci([1.0, 2.0, 3.0])                       # mean 2, s = 1, t(0.975, 2) = 4.3027: 2 ± 2.4841
    assert r['mean'] == 2.0 and abs(r['ci95'][0] - (2 - 2.4841)) < 1e-3 and abs(r['ci95'][1] - (2 + 2.4841)) < 1e-3
    assert eco.t_ci([5.0])['ci95'] is None
    pt = lambda it, v: {'iter': it, 'Set5': {'psnr': v, 'ssim': 0.9}, 'Set14': {'psnr': v - 2, 'ssim': 0.8}}
    runs = [{'arm': arm, 'seed': s, 'curve': [pt(10, 20 + s + d), pt(50, 30 + s + 2 * d)]}
            for arm, d in (('vanilla', 0.0), ('eco_none', 0.5)) for s in range(3)]
    out = eco.summarise(runs, ('vanilla', 'eco_none'))
    assert out['eco_none']['Set5_p20']['iter'] == 10 and out['eco_none']['Set5_end']['iter'] == 50
    d = out['eco_none']['Set5_end']['psnr_minus_vanilla']
    assert abs(d['mean'] - 1.0) < 1e-12 and d['ci95'][0] == d['ci95'][1] == 1.0   # the same gain on every seed: a zero-width interval


@pytest.mark.skipif(shared_data() is None or not (shared_data() / 'Kodak24').is_dir(), reason='needs ../shared/data (Kodak24, Set5, Set14, IMDN)')
def test_eco_experiment_smoke():
    "A few iterations of every arm and part: the machinery runs end to end (not the claims)."
    r = subprocess.run([sys.executable, str(ROOT / 'experiments' / 'eco.py'), '--smoke', '--threads', '1'], capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    for arm in ('vanilla', 'kd', 'eco_none', 'eco_linear', 'eco_sigmoid'): assert f'{arm} ' in r.stdout, r.stdout
    assert 'smoke run ok' in r.stdout
