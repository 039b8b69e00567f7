"""The `restorekit-2afc` CLI with relative paths (run folder, resume, score), the data path metric.json records, the
`make` refusal's flag, and the provenance of judgments (human (BAPPS) / unknown) in train's and score's outputs.
Tiny sets (make_2afc on the bundled photos, write_bapps_fixture), the demo preset on a random AlexNet, 1 + 1 epochs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from restorekit.core import sample_images
from restorekit.twoafc import write_bapps_fixture
from restorekit.twoafc_run import RUN_OUTPUTS_2AFC, EpochCheckpoint, twoafc_cli
from conftest import patience   # hang guards (subprocess timeouts) scaled by the machine's load

TINY = ['synthetic.n_train=60', 'synthetic.n_val=30', 'epochs=1', 'decay_epochs=1']


@pytest.fixture(scope='module')
def rel_run(tmp_path_factory):
    "A demo run trained from `cwd` into the default (relative) run folder, killed after epoch 1 and resumed by its relative path."
    cwd = tmp_path_factory.mktemp('cwd')
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        orig = EpochCheckpoint.after_epoch
        def crash(self):
            orig(self)
            raise KeyboardInterrupt('simulated kill after epoch 1')
        mp.setattr(EpochCheckpoint, 'after_epoch', crash)
        with pytest.raises(KeyboardInterrupt): twoafc_cli(['train', '--preset', 'demo', '--set', *TINY])
        mp.setattr(EpochCheckpoint, 'after_epoch', orig)
        (rel,) = [p.relative_to(cwd) for p in (cwd/'runs').iterdir()]      # runs/2afc-demo-<date-time>
        assert str(rel).startswith('runs/2afc-demo-')
        assert twoafc_cli(['train', '--resume', '--run-dir', str(rel)]) == 0
    return cwd, rel


def test_relative_run_dir_gets_every_output_once(rel_run):
    cwd, rel = rel_run
    run = cwd/rel
    assert sorted(p.name for p in cwd.iterdir()) == ['runs'] and [p.name for p in (cwd/'runs').iterdir()] == [rel.name]
    assert sorted(p.name for p in run.iterdir()) == sorted(RUN_OUTPUTS_2AFC)   # no run/runs/... inside
    assert not list(run.rglob('runs'))
    assert [json.loads(l)['epoch'] for l in (run/'log.jsonl').read_text().splitlines()] == [1, 2]
    assert json.loads((run/'summary.json').read_text())['best_epoch'] in (1, 2)


def test_relative_run_dir_explicit_and_score(rel_run, tmp_path, monkeypatch, capsys):
    cwd, rel = rel_run
    monkeypatch.chdir(cwd)
    assert twoafc_cli(['score', '--metric', str(rel), '--data', str(rel/'synthetic'), '--json']) == 0
    r = json.loads(capsys.readouterr().out)
    assert r['judgments'] == 'synthetic' and r['n'] == 30
    assert r['twoafc'] == pytest.approx(json.loads((rel/'summary.json').read_text())['val_2afc'], abs=1e-6)
    monkeypatch.chdir(tmp_path)
    assert twoafc_cli(['train', '--preset', 'demo', '--set', *TINY, 'synthetic.n_train=40', 'synthetic.n_val=20', 'decay_epochs=0',
                       '--run-dir', 'x']) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ['x'] and (tmp_path/'x'/'best.safetensors').is_file()
    assert not (tmp_path/'x'/'x').exists()


def test_metric_json_records_the_data_path_resolved(rel_run):
    cwd, rel = rel_run
    info = json.loads((cwd/rel/'metric'/'metric.json').read_text())
    assert Path(info['data']).is_absolute() and info['data'] == str((cwd/rel/'synthetic').resolve())
    assert info['judgments'] == 'synthetic'


def test_make_refusal_names_the_cli_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    imgs = [str(p) for p in sample_images()[:3]]
    (tmp_path/'imgs').mkdir()
    for p in imgs: (tmp_path/'imgs'/Path(p).name).write_bytes(Path(p).read_bytes())
    argv = ['make', '--images', 'imgs', '--dest', 'set', '--n-train', '8', '--n-val', '4']
    assert twoafc_cli(argv) == 0 and (tmp_path/'set'/'observer.json').is_file()
    capsys.readouterr()
    assert twoafc_cli(argv) == 2
    err = capsys.readouterr().err
    assert '--overwrite' in err and len(err.strip().splitlines()) == 1
    assert twoafc_cli(argv + ['--overwrite']) == 0
    exe = Path(sys.executable).parent/'restorekit-2afc'                     # the installed console script (main)
    if exe.is_file():
        r = subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=patience(300))
        assert r.returncode == 2 and '--overwrite' in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_unknown_provenance_in_train_and_score(rel_run, tmp_path, monkeypatch, capsys):
    cwd, rel = rel_run
    mine = write_bapps_fixture(tmp_path/'mine', split='train', categories=('ours',), n=8)
    write_bapps_fixture(mine, split='val', categories=('ours',), n=6, seed=1)
    monkeypatch.chdir(tmp_path)
    assert twoafc_cli(['train', '--preset', 'demo', '--data', 'mine', '--run-dir', 'r', '--set', 'epochs=1', 'decay_epochs=0',
                       'train_categories=[ours]', 'val_categories=[ours]']) == 0
    out = capsys.readouterr().out
    assert 'unknown provenance' in out and 'human' not in out and 'recorded' not in out
    s = json.loads((tmp_path/'r'/'summary.json').read_text())
    info = json.loads((tmp_path/'r'/'metric'/'metric.json').read_text())
    assert s['judgments'] == info['judgments'] == 'unknown provenance' and 'unknown provenance' in s['label']
    assert info['data'] == str((tmp_path/'mine').resolve())
    assert twoafc_cli(['score', '--metric', str(cwd/rel), '--data', 'mine', '--categories', 'ours']) == 0
    out = capsys.readouterr().out
    assert 'unknown provenance' in out and 'human' not in out
    bapps = write_bapps_fixture(tmp_path/'bapps', categories=('cnn',), n=4)
    assert twoafc_cli(['score', '--metric', str(cwd/rel), '--data', 'bapps', '--categories', 'cnn', '--json']) == 0
    assert json.loads(capsys.readouterr().out)['judgments'] == 'human (BAPPS)'
