"""Issue 12 (part): nothing a user owns is lost. Each case runs the real console script (or `train`) on temp folders and
compares the sha256 of every file that existed before with after."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from restorekit.core import save_image
from restorekit.learner import default_metrics, restoration_dls, restoration_learner
from restorekit.models import create_model, save_weights
from restorekit.train import load_config, train

pytestmark = pytest.mark.usefixtures('one_thread')   # conftest.py
TINY = ['n_iter=20', 'validate_every=10', 'checkpoint_every=10', 'patch=32', 'bs=4', 'model_kw.n_blocks=1', 'valid_crop=64']


def hashes(root: Path) -> dict:
    "sha256 of every file below `root`."
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob('*')) if p.is_file()}


def unchanged(before: dict) -> bool:
    return all(p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest() == h for p, h in before.items())


@pytest.fixture(scope='module')
def model_file(tmp_path_factory):
    d = tmp_path_factory.mktemp('model')
    m = create_model('edsr_baseline', 2, seed=0, n_feats=8, n_blocks=1)
    save_weights(m, d / 'best.safetensors', {'arch': 'edsr_baseline', 'scale': 2, 'model_kw': json.dumps({'n_feats': 8, 'n_blocks': 1})})
    return d / 'best.safetensors'


def upscale(*args):
    return subprocess.run([sys.executable, '-m', 'restorekit.upscale', *map(str, args), '--quiet'], capture_output=True,
                          text=True, timeout=300)


def photos(folder: Path, *names):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for n in names: save_image(torch.from_numpy(rng.random((3, 20, 24), dtype=np.float32)), folder / n)


def test_upscale_never_overwrites_another_input(tmp_path, model_file):
    "Item 1: `pic.png` and `pic_x2.png` with --suffix _x2 --overwrite: the output of pic.png would be the input pic_x2.png."
    d = tmp_path / 'dir'; photos(d, 'pic.png', 'pic_x2.png')
    before = hashes(d)
    r = upscale(d / 'pic.png', d / 'pic_x2.png', '-o', d, '--suffix', '_x2', '--overwrite', '--model', model_file)
    assert unchanged(before), r.stdout + r.stderr
    assert 'would overwrite an input' in r.stderr
    assert (d / 'pic_x2_x2.png').is_file()                     # the other input was upscaled


def test_upscale_output_inside_input_is_not_fed_back(tmp_path, model_file):
    "Item 2: `-o in/out` twice: the second run does not upscale the first run's outputs."
    d = tmp_path / 'in'; photos(d, 'a.png', 'b.png')
    r1 = upscale(d, '-o', d / 'out', '--model', model_file)
    assert r1.returncode == 0, r1.stderr
    first = {p: h for p, h in hashes(d).items() if p.name != 'upscale_report.json'}   # the report is rewritten (see issue 12)
    r2 = upscale(d, '-o', d / 'out', '--model', model_file)
    assert r2.returncode == 0 and '0 written, 2 skipped' in r2.stdout, r2.stdout
    assert unchanged(first) and not list((d / 'out').rglob('out'))   # no in/out/in/out/...


def test_train_refuses_a_folder_it_did_not_write(tmp_path):
    "Item 3: a folder holding the user's own config.yaml/summary.json, or a finished run whose checkpoint/ was removed."
    own = tmp_path / 'mine'; own.mkdir()
    (own / 'config.yaml').write_text('my: settings\n'); (own / 'summary.json').write_text('{"mine": 1}')
    before = hashes(own)
    with pytest.raises(FileExistsError, match='config.yaml, summary.json'):
        train(load_config(preset='demo', overrides=TINY), run_dir=own, verbose=False)
    assert hashes(own) == before
    run = train(load_config(preset='demo', overrides=TINY), run_dir=tmp_path / 'run', verbose=False)
    import shutil; shutil.rmtree(run / 'checkpoint')
    before = hashes(run)
    with pytest.raises(FileExistsError, match='best.safetensors'):
        train(load_config(preset='demo', overrides=TINY), run_dir=run, verbose=False)
    assert hashes(run) == before


def test_refused_resume_changes_nothing(tmp_path):
    "Item 4: `--resume --n-iter 22` on a 20-iteration run, and a resume on a damaged checkpoint, are refused untouched."
    run = train(load_config(preset='demo', overrides=TINY), run_dir=tmp_path / 'run', verbose=False)
    before = hashes(run)
    r = subprocess.run([sys.executable, '-m', 'restorekit.train', '--resume', '--run-dir', str(run), '--n-iter', '22'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and 'Nothing was changed' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert hashes(run) == before
    assert train(resume=True, run_dir=run, verbose=False) == run      # a plain resume still works (nothing left to do)
    ck = sorted((run / 'checkpoint').glob('*.model.safetensors'))[0]
    ck.write_bytes(ck.read_bytes()[:-8])                            # damaged
    before = hashes(run)
    with pytest.raises(ValueError, match='restore the checkpoint folder from a backup'): train(resume=True, run_dir=run, verbose=False)
    assert hashes(run) == before


@pytest.mark.parametrize('override, msg', [
    ('grad_clip=-1', 'grad_clip is the largest gradient norm'), ('grad_clip=0', 'grad_clip'),
    ('lr=-0.001', 'lr must be'), ('lr=.inf', 'lr must be'), ('ema=0', 'ema is the EMA decay'), ('ema=1', 'ema is the EMA decay'),
    ('warmup=1', 'warmup'), ('valid_crop=-8', 'valid_crop must be >= 1'), ('loss.l1=.inf', 'finite'),
])
def test_numeric_config_ranges(override, msg):
    "Item 5: every numeric key's range is checked, with a message naming it."
    with pytest.raises((ValueError, TypeError), match=msg): load_config(preset='demo', overrides=[override])


def test_learner_refuses_negative_grad_clip(store, valid_imgs):
    dls = restoration_dls(store, valid_imgs, bs=4, patch=32, scale=2, degrade='bicubic', epoch_len=2, valid_crop=64, device='cpu')
    for kw, msg in (({'grad_clip': -1.0}, 'grad_clip'), ({'lr': 0.0}, 'lr must be'), ({'wd': -1e-4}, 'wd')):
        with pytest.raises(ValueError, match=msg):
            restoration_learner(dls, model_kw={'n_feats': 8, 'n_blocks': 1}, metrics=default_metrics(2, lpips=False), **kw)
