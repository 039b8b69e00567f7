"""Files restorekit writes atomically get the permissions a plain `open(path, 'w')` would give (0o666 minus the umask),
not mkstemp's 0o600; a file being replaced keeps its own mode. Checked under umask 0o022 and 0o077, directly and
through real callers (save_image, save_weights, plot_loss_curve)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from restorekit import core
from restorekit.callbacks import plot_loss_curve
from restorekit.core import atomic_write_bytes, save_image
from restorekit.models import create_model, save_weights

pytestmark = pytest.mark.skipif(os.name != 'posix', reason='POSIX permission bits')


def mode(p) -> int: return os.stat(p).st_mode & 0o777


@pytest.fixture(params=[0o022, 0o077], ids=['umask022', 'umask077'])
def umask(request):
    old = os.umask(request.param)
    try: yield request.param
    finally: os.umask(old)


def plain_mode(tmp_path) -> int:
    "The mode of a file created with open(), the reference."
    p = tmp_path/'plain.txt'
    with open(p, 'w'): pass
    return mode(p)


def test_new_file_gets_open_mode(tmp_path, umask):
    p = atomic_write_bytes(tmp_path/'sub'/'a.bin', b'abc')
    assert mode(p) == 0o666 & ~umask == plain_mode(tmp_path)
    assert p.read_bytes() == b'abc'
    assert not [f for f in p.parent.iterdir() if f.suffix == '.tmp']


def test_umask_read_without_proc(tmp_path, umask, monkeypatch):
    "Where /proc/self/status is missing (macOS, BSD) the umask comes from os.umask, restored afterwards."
    monkeypatch.setattr(core, '_PROC_STATUS', str(tmp_path/'no-such-file'))
    assert core._umask() == umask
    assert mode(atomic_write_bytes(tmp_path/'b.bin', b'x')) == 0o666 & ~umask
    assert os.umask(umask) == umask   # still set as before


@pytest.mark.parametrize('existing', [0o600, 0o640, 0o644, 0o444])
def test_replaced_file_keeps_its_mode(tmp_path, umask, existing):
    p = tmp_path/'r.bin'
    p.write_bytes(b'old'); os.chmod(p, existing)
    atomic_write_bytes(p, b'new')
    assert (mode(p), p.read_bytes()) == (existing, b'new')


def test_setuid_bits_not_kept(tmp_path, umask):
    p = tmp_path/'s.bin'
    p.write_bytes(b'old'); os.chmod(p, 0o4755)
    atomic_write_bytes(p, b'new')
    assert os.stat(p).st_mode & 0o7777 == 0o755


def test_real_callers(tmp_path, umask):
    "The outputs of a training run and of the upscaler: weights, loss curve, images."
    want = 0o666 & ~umask
    w = save_weights(create_model('edsr_baseline', scale=2, n_feats=8, n_blocks=1), tmp_path/'run'/'best.safetensors')
    log = tmp_path/'run'/'log.jsonl'
    log.write_text(''.join(json.dumps(r) + '\n' for r in
                           [{'type': 'train', 'iter': i, 'loss': 1 / i} for i in range(1, 6)] + [{'type': 'valid', 'iter': 5, 'psnr': 30.0}]))
    png = plot_loss_curve(log, tmp_path/'run'/'loss_curve.png')
    img = save_image(torch.rand(3, 8, 8), tmp_path/'up'/'x.png')
    assert {f.name: mode(f) for f in (w, png, img)} == {f.name: want for f in (w, png, img)}
    assert mode(log) == want == plain_mode(tmp_path)
    os.chmod(w, 0o640)
    save_weights(create_model('edsr_baseline', scale=2, n_feats=8, n_blocks=1), w)   # the best weights, replaced
    assert mode(w) == 0o640
