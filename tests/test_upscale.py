"""`restorekit-upscale`: folders with bad files (reported, the batch goes on), formats kept (16-bit, gray, alpha),
inputs never overwritten, no temporary files left, exit codes, and a tiled result equal to the untiled one."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from restorekit.core import load_image, save_image
from restorekit.inference import restore
from restorekit.models import create_model, save_weights
from conftest import patience   # hang guards (subprocess timeouts) scaled by the machine's load

SCALE = 2


@pytest.fixture(scope='module')
def model_file(tmp_path_factory):
    d = tmp_path_factory.mktemp('model')
    m = create_model('edsr_baseline', SCALE, seed=0, n_feats=8, n_blocks=1)
    save_weights(m, d / 'best.safetensors', {'arch': 'edsr_baseline', 'scale': SCALE, 'model_kw': json.dumps({'n_feats': 8, 'n_blocks': 1})})
    return d / 'best.safetensors', m.eval()


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / 'in'
    (src / 'nested').mkdir(parents=True)
    img = lambda c, h, w: torch.from_numpy(rng.random((c, h, w), dtype=np.float32))
    save_image(img(3, 37, 29), src / 'rgb.png')
    save_image(img(3, 40, 40), src / 'nested' / 'photo.jpg')
    save_image(img(3, 33, 35), src / 'deep16.png', bits=16)
    save_image(img(1, 30, 31), src / 'gray.png')
    save_image(img(4, 26, 34), src / 'alpha.png')
    (src / 'empty.png').write_bytes(b'')
    (src / 'notanimage.jpg').write_text('hello')
    (src / 'truncated.png').write_bytes((src / 'rgb.png').read_bytes()[:80])
    (src / 'readme.txt').write_text('ignored')
    return src


def run(*args, cwd=None):
    return subprocess.run([sys.executable, '-m', 'restorekit.upscale', *map(str, args), '--quiet'], capture_output=True,
                          text=True, cwd=cwd, timeout=patience(300))


def test_folder_with_bad_files(folder, model_file, tmp_path):
    out = tmp_path / 'out'
    before = {p: p.read_bytes() for p in folder.rglob('*') if p.is_file()}
    r = run(folder, '-o', out, '--model', model_file[0], '--tile', '24')
    assert r.returncode == 1, r.stderr                                   # some failed, after all were tried
    assert '5 written, 0 skipped, 3 failed' in r.stdout, r.stdout + r.stderr
    rep = json.loads((out / 'upscale_report.json').read_text())
    assert sorted(p.split('/')[-1] for p in (f['file'] for f in rep['failed'])) == ['empty.png', 'notanimage.jpg', 'truncated.png']
    assert all(f['reason'] for f in rep['failed']) and rep['ignored'] == [str(folder / 'readme.txt')]
    for name in ('empty.png', 'notanimage.jpg', 'truncated.png'): assert name in r.stderr
    o = out / 'in'
    t, info = load_image(o / 'deep16.png', mode='RGBA', with_info=True)
    assert info['bits'] == 16 and t.shape[-2:] == (66, 70)
    assert load_image(o / 'gray.png', with_info=True)[1]['mode'] == 'L'
    a, info = load_image(o / 'alpha.png', mode='RGBA', with_info=True)
    assert 'A' in info['mode'] and a.shape == (4, 52, 68)
    assert load_image(o / 'nested' / 'photo.jpg').shape == (3, 80, 80)
    assert load_image(o / 'rgb.png').shape == (3, 74, 58)
    assert not [p for p in out.rglob('*') if p.name.startswith('.') or p.suffix == '.tmp']   # atomic writes: no leftovers
    assert {p: p.read_bytes() for p in folder.rglob('*') if p.is_file()} == before            # inputs untouched
    r = run(folder, '-o', out, '--model', model_file[0], '--tile', '24')                       # again: nothing overwritten
    assert '0 written, 5 skipped, 3 failed' in r.stdout, r.stdout


def test_never_overwrites_inputs(folder, model_file):
    r = run(folder / 'rgb.png', '-o', folder, '--model', model_file[0], '--overwrite')
    assert r.returncode == 0 and '0 written, 1 skipped' in r.stdout
    assert 'would overwrite an input' in r.stderr
    assert load_image(folder / 'rgb.png').shape == (3, 37, 29)


def test_tiled_output_equals_untiled(folder, model_file, tmp_path):
    "With --overlap auto (twice the receptive field) the tiles join without a trace: the file equals a one-pass restore."
    r = run(folder / 'deep16.png', '-o', tmp_path / 'o', '--model', model_file[0], '--tile', '32', '--blend', 'linear')
    assert r.returncode == 0, r.stderr
    x = load_image(folder / 'deep16.png')
    ref = restore(model_file[1], x, tile=None).clamp(0, 1)
    got = load_image(tmp_path / 'o' / 'deep16.png')
    assert (got - ref).abs().max() <= 1 / 65535 + 1e-6                  # 16-bit rounding only


@pytest.mark.parametrize('args, msg', [
    (['--model', 'nope.safetensors'], 'does not exist'),
    (['--model', '{weights}', '--tile', 'big'], "--tile must be 'auto'"),
])
def test_usage_errors(folder, model_file, tmp_path, args, msg):
    args = [a.replace('{weights}', str(model_file[0])) for a in args]
    r = run(folder, '-o', tmp_path / 'o', *args, cwd=tmp_path)
    assert r.returncode == 2 and msg in r.stderr, r.stderr
    assert not (tmp_path / 'o' / 'in').exists()
