"""`restorekit-upscale`: folders with bad files (reported, the batch goes on), formats kept (16-bit, gray, alpha),
inputs never overwritten, no temporary files left, exit codes, and a tiled result equal to the untiled one."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from restorekit.core import load_image, save_image
from restorekit.inference import restore
from restorekit.models import create_model, save_weights
from conftest import patience, run_cli   # hang guards (subprocess timeouts) scaled by the machine's load; console entry points in-process
from restorekit.upscale import upscale_cli

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
    "Every output would be its own input: refused up front (rc 2, one line), not a run that writes nothing and exits 0."
    r = run(folder / 'rgb.png', '-o', folder, '--model', model_file[0], '--overwrite')
    assert r.returncode == 2 and 'would overwrite an input' in r.stderr, r.stdout + r.stderr
    assert load_image(folder / 'rgb.png').shape == (3, 37, 29) and not (folder / 'upscale_report.json').exists()


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


# --- refuse or write: never a run that writes nothing and exits 0 -------------------------------------------------------

def snapshot(root: Path) -> dict:
    "Every path under `root`: the sha256 of each file, None for each folder (or other entry)."
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None for p in root.rglob('*')}


@pytest.mark.parametrize('case', ['outdir_is_input', 'outdir_holds_input', 'file_onto_itself', 'no_images'])
def test_refuses_runs_that_would_write_nothing(tmp_path, model_file, capsys, case):
    "`DIR -o DIR`, `P/photos -o P --suffix _x2`, a file into its own folder, a folder with no image: one line, rc 2, nothing written."
    photos = tmp_path / 'P' / 'photos'
    save_image(torch.rand(3, 20, 24), photos / 'a.png'); save_image(torch.rand(3, 20, 24), photos / 'sub' / 'b.png')
    (tmp_path / 'docs').mkdir(); (tmp_path / 'docs' / 'notes.txt').write_text('no images here')
    args, msg = {'outdir_is_input': ([photos, '-o', photos, '--overwrite'], 'is the input folder'),
                 'outdir_holds_input': ([photos, '-o', tmp_path / 'P', '--suffix', '_x2'], 'among the inputs'),
                 'file_onto_itself': ([photos / 'a.png', '-o', photos, '--overwrite'], 'would overwrite an input'),
                 'no_images': ([tmp_path / 'docs', '-o', tmp_path / 'out'], 'no image file')}[case]
    before = snapshot(tmp_path)
    rc = run_cli(upscale_cli, 'restorekit-upscale', [*args, '--model', model_file[0], '--quiet'])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and msg in err and len(err.splitlines()) == 1 and err.startswith('restorekit-upscale: error:'), (rc, err)
    assert snapshot(tmp_path) == before                      # nothing written, not even the report or the output folder


def test_outdir_above_another_input_folder_is_fine(tmp_path, model_file, capsys):
    "`P/x/photos -o P`: the outputs go to `P/photos`, away from the inputs, which are all upscaled (not dropped as earlier outputs)."
    src = tmp_path / 'P' / 'x' / 'photos'; save_image(torch.rand(3, 20, 24), src / 'a.png')
    rc = run_cli(upscale_cli, 'restorekit-upscale', [src, '-o', tmp_path / 'P', '--model', model_file[0], '--quiet'])
    assert rc == 0 and '1 written' in capsys.readouterr().out
    assert load_image(tmp_path / 'P' / 'photos' / 'a.png').shape == (3, 40, 48)


# --- never open what is not a regular file ----------------------------------------------------------------------------

def console(*args, **kw):
    "Run the `restorekit-upscale` console script (hang guard: a generous, load-scaled timeout, so a hang fails the test)."
    exe = Path(sys.executable).parent / 'restorekit-upscale'
    cmd = [str(exe)] if exe.is_file() else [sys.executable, '-m', 'restorekit.upscale']
    return subprocess.run([*cmd, *map(str, args), '--quiet'], capture_output=True, text=True, timeout=patience(300), **kw)


@pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='needs POSIX FIFOs')
def test_fifo_is_reported_not_read(tmp_path, model_file):
    "A FIFO named pipe.png, in a folder and given directly, would block forever on open: it is failed as not a regular file."
    src = tmp_path / 'in'; save_image(torch.rand(3, 20, 24), src / 'a.png')
    os.mkfifo(src / 'pipe.png')
    r = console(src, src / 'pipe.png', '-o', tmp_path / 'out', '--model', model_file[0])
    assert r.returncode == 1 and '1 written, 0 skipped, 2 failed' in r.stdout, r.stdout + r.stderr
    rep = json.loads((tmp_path / 'out' / 'upscale_report.json').read_text())
    assert [f['file'] for f in rep['failed']] == [str(src / 'pipe.png')] * 2
    assert all('not a regular file' in f['reason'] for f in rep['failed']) and 'not a regular file' in r.stderr
    assert (tmp_path / 'out' / 'in' / 'a.png').is_file() and not (tmp_path / 'out' / 'pipe.png').exists()


@pytest.mark.skipif(not Path('/dev/zero').exists(), reason='needs /dev/zero')
def test_dev_zero_is_reported_not_read(tmp_path, model_file):
    "/dev/zero given directly is never read (it never ends): failed as not a regular file."
    def cap_memory():   # a safety net for the old code, which read /dev/zero until memory ran out
        import resource
        resource.setrlimit(resource.RLIMIT_DATA, (3 << 30, 3 << 30))
    r = console('/dev/zero', '-o', tmp_path / 'out', '--model', model_file[0], preexec_fn=cap_memory)
    assert r.returncode == 1 and '0 written, 0 skipped, 1 failed' in r.stdout, r.stdout + r.stderr
    assert '/dev/zero' in r.stderr and 'not a regular file' in r.stderr
    assert [p.name for p in (tmp_path / 'out').iterdir()] == ['upscale_report.json']
