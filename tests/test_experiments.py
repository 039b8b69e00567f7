"""Smoke versions of the experiments in `experiments/` (CI runs these; the committed results come from full runs)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from restorekit.core import shared_data
from conftest import patience   # hang guards (subprocess timeouts) scaled by the machine's load

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shared_data() is None or not (shared_data() / 'weights_IMDN' / 'IMDN_x2.pth').is_file(),
                    reason='needs ../shared/data (IMDN x2 weights and Set5)')
def test_finetune_defaults_smoke():
    r = subprocess.run([sys.executable, str(ROOT / 'experiments' / 'finetune_defaults.py'), '--smoke'],
                       capture_output=True, text=True, timeout=patience(900))
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [l for l in r.stdout.splitlines() if ' seed 0: ' in l]
    assert len(lines) == 4, r.stdout
    before = {float(l.split(': ')[1].split(' -> ')[0]) for l in lines if l.startswith('bicubic')}
    assert len(before) == 1 and abs(before.pop() - 38.00) < 0.05    # IMDN x2 on Set5: the published 38.00 dB


def _experiment(name: str):
    "The module of experiments/{name}.py (the scripts are not a package)."
    import importlib.util
    spec = importlib.util.spec_from_file_location(f'{name}_experiment', ROOT / 'experiments' / f'{name}.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def _eco_module(): return _experiment('eco')


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
                       text=True, timeout=patience(1200))
    assert r.returncode == 0, r.stderr[-3000:]
    for arm in ('vanilla', 'kd', 'eco_none', 'eco_linear', 'eco_sigmoid'): assert f'{arm} ' in r.stdout, r.stdout
    assert 'smoke run ok' in r.stdout


def _lst_module(): return _experiment('lin_scratch_tune')


def test_lin_scratch_tune_statistics():
    "McNemar on a hand table, Cohen's d and the paired t on a worked example, bootstrap CI coverage on a simulated case."
    import numpy as np
    lst = _lst_module()
    a = np.array([1] * 10 + [0] * 2 + [1] * 5 + [0] * 3, bool)   # b = 10 (a right, b wrong), c = 2, 5 both right, 3 both wrong
    b = np.array([0] * 10 + [1] * 2 + [1] * 5 + [0] * 3, bool)
    m = lst.mcnemar(a, b)
    assert (m['b'], m['c']) == (10, 2) and abs(m['p'] - 2 * (1 + 12 + 66) / 4096) < 1e-12        # exact: 2·P(X ≤ 2 | 12, ½)
    assert lst.mcnemar(a, a)['p'] == 1.0
    x, y = [1., 2., 3., 4.], [0., 0., 0., 0.]                   # differences 1..4: mean 2.5, sd 1.2910 (ddof 1)
    assert abs(lst.cohens_d_paired(x, y) - 2.5 / 1.2909944) < 1e-6
    t = lst.paired_t(x, y)                                      # t = 2.5 / (1.2910 / 2) = 3.8730, df 3: p = 0.03047
    assert abs(t['t'] - 3.8729833) < 1e-6 and abs(t['p'] - 0.030466) < 1e-5
    assert np.isnan(lst.paired_t([1.], [0.])['p'])
    rng = np.random.default_rng(0)                              # coverage of the 95 % bootstrap CI of a Bernoulli(0.7) mean, n = 200
    hits = sum(lo <= 0.7 <= hi for lo, hi in (lst.bootstrap_ci(rng.random(200) < 0.7, n_resamples=1000, seed=i) for i in range(200)))
    assert 0.90 <= hits / 200 <= 0.99, hits
    d = lst.paired_bootstrap_diff(np.ones(50), np.zeros(50))
    assert d['diff'] == 1.0 and d['ci'] == [1.0, 1.0] and d['p_bootstrap'] == 0.0
    lo, hi = lst.t_ci([1., 2., 3.])
    assert abs(lo - (2 - 2.4841)) < 1e-3 and abs(hi - (2 + 2.4841)) < 1e-3


@pytest.mark.skipif(shared_data() is None or not (shared_data() / 'Kodak24').is_dir(), reason='needs ../shared/data (Kodak24, IMDN x2)')
def test_lin_scratch_tune_smoke(tmp_path):
    "The protocol end to end on a tiny synthetic set (machinery, not claims): a complete table; a rerun reproduces the numbers."
    import json
    lst = _lst_module()
    res = lst.main(['--smoke', '--trunks', 'alex', 'sr', '--threads', '1', '--out', str(tmp_path / 'a')])   # 1 thread: pytest-xdist runs another test beside it
    rows = res['summary']['rows']
    assert set(rows) == {'alex/scratch', 'sr/lin', 'sr/scratch', 'sr/tune'} and res['judgments'] == 'synthetic'
    assert {(s['trunk'], s['paradigm']) for s in res['skipped']} == {('alex', 'lin'), ('alex', 'tune')}   # no ImageNet weights offline
    assert len(res['summary']['comparisons']) == 3 and all(0 <= r['twoafc'] <= 1 for r in rows.values())
    assert {'L2 (Lab)', '1 - SSIM', '1 - MS-SSIM (3x3)', '-PSNR'} <= set(res['summary']['baselines'])
    md = (tmp_path / 'a' / 'lin_scratch_tune_table.md').read_text()
    assert 'synthetic judgments' in md and 'Published' in md and 'not run' in md
    for f in ('lst_curves.png', 'lst_heads.png', 'lst_lr.png', 'lin_scratch_tune.json'): assert (tmp_path / 'a' / f).is_file()
    again = lst.main(['--smoke', '--trunks', 'alex', '--paradigms', 'scratch', '--threads', '1', '--out', str(tmp_path / 'b')])
    assert again['summary']['rows']['alex/scratch']['twoafc_per_seed'] == rows['alex/scratch']['twoafc_per_seed']
    assert json.loads((tmp_path / 'b' / 'lin_scratch_tune.json').read_text())['summary']['baselines']['L2 (Lab)']['twoafc'] == res['summary']['baselines']['L2 (Lab)']['twoafc']


def test_lin_scratch_tune_on_the_bapps_layout_with_jnd(tmp_path):
    "The real-reproduction path (--data in the BAPPS layout, JND folders present) on a generated fixture: per-category rows and JND mAP."
    from restorekit.twoafc import write_bapps_fixture
    lst = _lst_module()
    d = tmp_path / 'dataset'
    write_bapps_fixture(d, split='train', categories=('traditional', 'cnn', 'mix'), n=20)
    write_bapps_fixture(d, split='val', categories=('traditional', 'cnn', 'superres', 'deblur', 'color', 'frameinterp'), n=8, jnd=True)
    res = lst.main(['--data', str(d), '--trunks', 'alex', '--paradigms', 'scratch', '--seeds', '0', '--epochs', '1', '--decay-epochs', '0',
                    '--n-train', '0', '--out', str(tmp_path / 'out')])
    row = res['summary']['rows']['alex/scratch']
    assert res['summary']['categories'] == ['traditional', 'cnn', 'superres', 'deblur', 'color', 'frameinterp'] and res['n_train'] == 60
    assert res['judgments'] != 'synthetic' and res['jnd'] and 0 <= row['jnd_map'] <= 1
    assert all(0 <= res['summary']['baselines'][k]['jnd_map'] <= 1 for k in ('L2 (Lab)', '-PSNR'))
