"""Tests of `restorekit.train`: config loading and its errors, a tiny CPU run, resuming an interrupted run, the CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

import restorekit.train
from restorekit.callbacks import CheckpointEvery, read_checkpoint
from restorekit.models import create_model, load_weights
from restorekit.train import TRAIN_PRESETS, TrainConfig, load_config, train
from conftest import patience, run_cli   # hang guards (subprocess timeouts) scaled by the machine's load; an entry point in-process

TINY = ['n_iter=20', 'validate_every=10', 'checkpoint_every=10', 'patch=32', 'bs=4', 'model_kw.n_blocks=1',
        'valid_crop=64']
RUN_FILES = ['best.safetensors', 'comparison.png', 'config.yaml', 'log.jsonl', 'loss_curve.png', 'summary.json']


pytestmark = pytest.mark.usefixtures('one_thread')   # conftest.py


def tiny_config(*extra) -> TrainConfig:
    return load_config(preset='demo', overrides=TINY + list(extra))


# --- config -------------------------------------------------------------------------------------------------------

def test_presets_load():
    for name in TRAIN_PRESETS:
        over = (['pretrained=' + __file__] if name == 'jpeg_heavy_finetune' else
                ['eco.teacher=' + __file__, 'eco.teacher_arch=imdn'] if name.startswith('eco_') else [])
        cfg = load_config(preset=name, overrides=over)
        assert cfg.preset == name and cfg.patch % cfg.scale == 0


def test_overrides_and_yaml(tmp_path):
    p = tmp_path / 'c.yaml'
    p.write_text(yaml.safe_dump({'preset': 'demo', 'n_iter': 7, 'loss': {'charbonnier': 0.5}}))
    cfg = load_config(p, ['model_kw.n_blocks=2', 'ema=null'])
    assert (cfg.n_iter, cfg.scale, cfg.ema) == (7, 2, None)
    assert cfg.loss == {'l1': 1.0, 'ms_ssim': 0.2, 'lpips': 0.0, 'vgg': 0.0, 'charbonnier': 0.5}
    assert cfg.model_kw == {'n_feats': 16, 'n_blocks': 2}


@pytest.mark.parametrize('kw, err, msg', [
    ({'overrides': ['n_iters=5']}, ValueError, "did you mean 'n_iter'"),
    ({'src': {'lerning_rate': 1e-3}}, ValueError, 'Valid keys: silver, valid'),
    ({'overrides': ['loss.lpip=1']}, ValueError, "did you mean 'lpips'"),
    ({'src': {'lr': 'fast'}}, TypeError, "'lr' must be float"),
    ({'src': {'bs': 2.5}}, TypeError, "'bs' must be int"),
    ({'overrides': ['patch=63']}, ValueError, 'not a multiple of scale 2'),
    ({'src': {'silver': '/no/such/store'}}, FileNotFoundError, 'does not exist'),
    ({'src': {'valid': ['/no/such.png']}}, FileNotFoundError, 'does not exist'),
    ({'overrides': ['degrade=jpg_heavy']}, ValueError, "did you mean 'jpeg_heavy'"),
    ({'overrides': ['n_iter']}, ValueError, 'key=value'),
])
def test_config_errors(kw, err, msg):
    with pytest.raises(err, match=msg): load_config(preset=kw.pop('preset', 'demo'), **kw)


def test_bad_preset_and_missing_pretrained():
    with pytest.raises(ValueError, match="did you mean 'demo'"): load_config(preset='dmeo')
    with pytest.raises(ValueError, match='set pretrained'): load_config(preset='jpeg_heavy_finetune')
    with pytest.raises(FileNotFoundError, match='pretrained'):
        load_config(preset='jpeg_heavy_finetune', overrides=['pretrained=/no/weights.safetensors'])


# --- training -----------------------------------------------------------------------------------------------------

def test_tiny_run(tmp_path):
    run = train(tiny_config(), run_dir=tmp_path / 'run', verbose=False)
    assert run == tmp_path / 'run'
    assert sorted(p.name for p in run.iterdir() if p.is_file()) == RUN_FILES
    assert read_checkpoint(run / 'checkpoint')['manifest']['iter'] == 20
    cfg = load_config(run / 'config.yaml')
    assert cfg.run_dir == str(run) and cfg.n_iter == 20
    load_weights(create_model(cfg.arch, cfg.scale, **cfg.model_kw), run / 'best.safetensors', strict=True)
    recs = [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()]
    assert sum(r['type'] == 'train' for r in recs) == 20 and any(r['type'] == 'valid' for r in recs)
    s = json.loads((run / 'summary.json').read_text())
    assert s['best_iter'] in (10, 20) and s['psnr_bicubic'] > 20
    with pytest.raises(FileExistsError, match='resume'): train(tiny_config(), run_dir=run, verbose=False)


def test_resume_after_interruption(tmp_path, monkeypatch):
    run = tmp_path / 'run'
    # kill the run right after its first checkpoint (iteration 10), as a crash would
    class Boom(Exception): pass
    orig = CheckpointEvery.save
    def save_then_crash(self):
        p = orig(self)
        if self.learn.train_iter == 10: raise Boom('killed at iteration 10')
        return p
    monkeypatch.setattr(CheckpointEvery, 'save', save_then_crash)
    with pytest.raises(Boom): train(tiny_config(), run_dir=run, verbose=False)
    assert read_checkpoint(run / 'checkpoint')['manifest']['iter'] == 10
    assert not (run / 'summary.json').exists()
    monkeypatch.setattr(CheckpointEvery, 'save', orig)
    train(resume=True, run_dir=run, verbose=False)
    assert read_checkpoint(run / 'checkpoint')['manifest']['iter'] == 20
    assert sorted(p.name for p in run.iterdir() if p.is_file()) == RUN_FILES
    iters = [json.loads(line)['iter'] for line in (run / 'log.jsonl').read_text().splitlines()
             if json.loads(line)['type'] == 'train']
    assert iters[-1] == 20 and len(iters) >= 20


def test_resume_needs_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match='not a run folder'): train(resume=True, run_dir=tmp_path, verbose=False)


# --- command line -------------------------------------------------------------------------------------------------

def _cli(*args, cwd):
    return subprocess.run([sys.executable, '-m', 'restorekit.train', *args], check=False, capture_output=True, text=True, cwd=cwd,
                          timeout=patience(300))


def test_cli(tmp_path):
    r = _cli('--preset', 'demo', '--n-iter', '10', '--run-dir', 'tmp', '--set', 'validate_every=5', 'patch=32', 'bs=4',
             'model_kw.n_blocks=1', 'valid_crop=64', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / 'tmp'
    assert sorted(p.name for p in run.iterdir() if p.is_file()) == RUN_FILES
    assert 'Run folder: tmp' in r.stdout
    assert load_config(run / 'config.yaml').n_iter == 10
    r = _cli('--resume', '--run-dir', 'tmp', cwd=tmp_path)          # a finished run: nothing left to train
    assert r.returncode == 0, r.stderr[-2000:]


def test_cli_errors(tmp_path, monkeypatch, capsys):
    "The console entry point, run in this process as its script runs it (`test_cli` runs the real script)."
    from restorekit.train import train_cli
    monkeypatch.chdir(tmp_path)
    for argv, says in ((['--preset', 'dmeo'], "did you mean 'demo'"), (['--preset', 'demo', '--set', 'n_iters=3'], "did you mean 'n_iter'"),
                       (['--resume'], '--run-dir')):
        rc, err = run_cli(train_cli, 'restorekit-train', argv), capsys.readouterr().err
        assert rc == 1 and says in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not any(tmp_path.iterdir())   # a refused command writes nothing


def _train_losses(run):
    return [json.loads(line)['loss'] for line in (run / 'log.jsonl').read_text().splitlines() if '"train"' in line]


def test_cli_finetune_from_saved_run(tmp_path, monkeypatch, capsys):
    "jpeg_heavy_finetune from a saved scale-1 run: the weights load strictly, the body is frozen first, training starts where the first run ended."
    from restorekit.train import train_cli
    monkeypatch.chdir(tmp_path)
    def cli(*argv):   # the console entry point in this process (`test_cli` runs the real script)
        rc = run_cli(train_cli, 'restorekit-train', list(argv)); return rc, capsys.readouterr().err
    small = ['patch=48', 'bs=4', 'model_kw.n_feats=8', 'model_kw.n_blocks=1', 'valid_crop=64', 'silver_patch=64']
    (tmp_path / 'pre.yaml').write_text(yaml.safe_dump({'arch': 'edsr_baseline', 'scale': 1, 'degrade': 'jpeg_heavy', 'lr': 1e-3,
                                                       'device': 'cpu', 'loss': {'l1': 1.0}}))
    rc, err = cli('--config', 'pre.yaml', '--run-dir', 'pre', '--set', 'n_iter=24', 'validate_every=12', 'checkpoint_every=12', *small)
    assert rc == 0, err[-2000:]
    # fine-tune, pointing at the run folder (its best.safetensors)
    rc, err = cli('--preset', 'jpeg_heavy_finetune', '--run-dir', 'ft', '--set', 'pretrained=pre', 'silver=pre/silver', 'n_iter=8',
                  'freeze_iters=4', 'validate_every=4', 'checkpoint_every=4', 'device=cpu', *small)
    assert rc == 0, err[-2000:]
    cfg = load_config(tmp_path / 'ft' / 'config.yaml')
    assert (cfg.preset, cfg.scale, cfg.freeze_iters, cfg.lr_mult) == ('jpeg_heavy_finetune', 1, 4, 10)
    assert cfg.pretrained == str(tmp_path / 'pre')                   # saved absolute: the run resumes from any folder
    pre, ft = _train_losses(tmp_path / 'pre'), _train_losses(tmp_path / 'ft')
    assert len(ft) == 8
    # the fine-tuned run starts from the pretrained weights: its first losses are the first run's late ones, not its early ones
    assert sum(ft[:4]) / 4 < 0.8 * sum(pre[:4]) / 4, (pre[:4], ft[:4])
    # a model of another scale is refused with the layers named
    rc, err = cli('--preset', 'sr_x2_bicubic', '--run-dir', 'bad', '--set', 'pretrained=pre/best.safetensors', 'silver=pre/silver',
                  'n_iter=4', *small)
    assert rc != 0 and 'tail' in err, err[-2000:]


def test_finetune_keeps_body_frozen_then_trains_it(tmp_path):
    "Through `train`: after `freeze_iters` iterations only the head moved; at the end the body moved too, at lr/lr_mult."
    from restorekit.models import model_splitter
    pre = train(tiny_config('n_iter=6'), run_dir=tmp_path / 'pre', verbose=False)
    ft = train(tiny_config('n_iter=6', f'pretrained={pre}', 'freeze_iters=6', 'ema=null', 'lr_mult=10'), run_dir=tmp_path / 'frozen',
               verbose=False)
    m0, m1 = (create_model('edsr_baseline', 2, n_feats=16, n_blocks=1) for _ in range(2))
    load_weights(m0, pre / 'best.safetensors')
    m1.load_state_dict(read_checkpoint(ft / 'checkpoint')['model'])
    (b0, h0), (b1, h1) = model_splitter(m0), model_splitter(m1)
    assert all(torch.equal(x, y) for x, y in zip(b0, b1))
    assert not all(torch.equal(x, y) for x, y in zip(h0, h1))


# --- threads, workers, the demo preset ------------------------------------------------------------------------------

def test_threads_and_workers(tmp_path, monkeypatch):
    "`threads` holds during the run (torch's setting is put back after), and DataLoader workers give the same run."
    seen = []
    orig = restorekit.train.fit_resumable
    def spy(learn, *a, **k):
        seen.append(torch.get_num_threads()); return orig(learn, *a, **k)
    monkeypatch.setattr(restorekit.train, 'fit_resumable', spy)
    torch.set_num_threads(2)
    try:
        r0 = train(tiny_config('threads=1'), run_dir=tmp_path / 'w0', verbose=False)
        assert seen == [1] and torch.get_num_threads() == 2
        r1 = train(tiny_config('threads=1', 'num_workers=1'), run_dir=tmp_path / 'w1', verbose=False)
        r2 = train(tiny_config('threads=1', 'num_workers=2', 'gold_on=workers'), run_dir=tmp_path / 'w2', verbose=False)
    finally: torch.set_num_threads(1)
    assert _train_losses(r0) == _train_losses(r1)   # the same patches and degradations with a worker process
    assert _train_losses(r0) == _train_losses(r2)   # ... and with the Gold stage itself in two workers
    with pytest.raises(ValueError, match='gold_on must be one of'): load_config(preset='demo', overrides=['gold_on=gpu'])
    with pytest.raises(ValueError, match='gold_on=device with eco'): load_config(preset='eco_demo', overrides=['gold_on=workers'])
    with pytest.raises(ValueError, match='jpeg_codec must be one of'): load_config(preset='demo', overrides=['jpeg_codec=nv'])
    with pytest.raises(ValueError, match='threads must be >= 1'): load_config(preset='demo', overrides=['threads=0'])
    with pytest.raises(ValueError, match='num_workers must be >= 0'): load_config(preset='demo', overrides=['num_workers=-1'])


def test_demo_trains_on_gold_degradations():
    cfg = load_config(preset='demo')
    assert cfg.degrade == 'light' and cfg.device == 'cpu' and cfg.threads == 1
    assert not cfg.loss['lpips'] and not cfg.loss['vgg']      # nothing to download


# --- comparison.png -------------------------------------------------------------------------------------------------

def test_detail_crop_is_the_most_detailed_window_of_the_target():
    "Item 9: the crop comparison.png shows is chosen by a rule on the HR target alone (`detail_crop`)."
    from restorekit.train import detail_crop
    img = torch.full((3, 64, 96), 0.5)
    img[:, 32:, 48:] = torch.rand(3, 32, 48, generator=torch.Generator().manual_seed(0))   # one textured quadrant
    t, l, b, r = detail_crop(img, 24)
    assert (b - t, r - l) == (24, 24) and t >= 32 and l >= 48 and b <= 64 and r <= 96   # inside it, inside the image
    assert detail_crop(img[None], 24) == (t, l, b, r) == detail_crop(img.clone(), 24)   # a batch of one; deterministic
    assert detail_crop(torch.full((3, 40, 50), .3), 16) == (0, 0, 16, 16)              # ties: top-most, then left-most
    assert detail_crop(img, 500) == (0, 32, 64, 96)                                    # clipped to the shorter side


def test_comparison_titles_whole_image_psnrs(tmp_path, monkeypatch, photo_maker):
    "Item 9: comparison.png's titles and `_comparison`'s dict give whole-image PSNRs; the crop shown is `detail_crop`'s."
    from restorekit.imresize import imresize
    from restorekit.metrics import psnr
    torch.manual_seed(0)
    model = create_model('edsr_baseline', 2, n_feats=8, n_blocks=1).eval()
    hqs = [torch.from_numpy(photo_maker(64, 80, seed=i)).permute(2, 0, 1).float() / 255 for i in range(2)]
    pairs = [(imresize(hq, 0.5).clamp(0, 1), hq) for hq in hqs]
    grids = []
    real = restorekit.train.image_grid
    def spy(rows, col_titles, titles=None, **kw):
        grids.append((rows, titles)); return real(rows, col_titles, titles, **kw)
    monkeypatch.setattr(restorekit.train, 'image_grid', spy)
    res = restorekit.train._comparison(model, pairs, 2, tmp_path / 'comparison.png', torch.device('cpu'))
    assert (tmp_path / 'comparison.png').stat().st_size > 0
    with torch.no_grad(): srs = [model(lq[None]).clamp(0, 1) for lq, _ in pairs]
    bics = [imresize(lq[None], 2).clamp(0, 1) for lq, _ in pairs]
    pb = [float(psnr(b, hq[None], 2)) for b, hq in zip(bics, hqs)]
    pm = [float(psnr(s, hq[None], 2)) for s, hq in zip(srs, hqs)]
    # summary.json's figures: means of whole-image PSNRs over the validation pairs
    assert res['psnr_bicubic'] == pytest.approx(sum(pb) / 2) and res['psnr_model'] == pytest.approx(sum(pm) / 2)
    shown = res['comparison']   # the image shown (the first pair): its whole-image PSNRs, and the crop by the rule
    assert shown['image'] == 0
    assert shown['psnr_bicubic'] == pytest.approx(pb[0]) and shown['psnr_model'] == pytest.approx(pm[0])
    from restorekit.train import detail_crop
    t, l, b, r = detail_crop(hqs[0], 32)   # half the shorter side
    assert tuple(shown['crop']) == (t, l, b, r)
    assert shown['crop_psnr_bicubic'] == pytest.approx(float(psnr(bics[0][..., t:b, l:r], hqs[0][None, :, t:b, l:r], 2)))
    assert shown['crop_psnr_model'] == pytest.approx(float(psnr(srs[0][..., t:b, l:r], hqs[0][None, :, t:b, l:r], 2)))
    json.dumps(res)   # it goes into summary.json
    # the picture: whole images titled with their whole-image PSNRs, then the crop, titled as the crop's
    (rows, titles), = grids
    assert torch.equal(rows[0][2], hqs[0]) and torch.equal(rows[1][2], hqs[0][:, t:b, l:r])
    assert torch.allclose(rows[1][1], srs[0][0, :, t:b, l:r])
    whole, crop = ' | '.join(titles[0]), ' | '.join(titles[1])
    assert 'whole image' in whole and f'{pb[0]:.2f} dB' in titles[0][0] and f'{pm[0]:.2f} dB' in titles[0][1]
    assert 'crop' in crop and f"{shown['crop_psnr_model']:.2f} dB" in titles[1][1] and f'{pm[0]:.2f}' not in crop


# --- resuming with another config, validating on the run's own outputs ----------------------------------------------

def _hashes(root):
    "SHA-256 of every file under `root`, by relative path."
    import hashlib
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob('*')) if p.is_file()}


def _refused(argv, capsys, says):
    "Run `restorekit-train argv` in this process; check it exits 1 with one line of error containing each of `says`."
    from restorekit.train import train_cli
    rc, err = run_cli(train_cli, 'restorekit-train', argv), capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1 and all(s in err for s in says), (argv, rc, err)
    return err


def test_cli_resume_refuses_config_changes(tmp_path, monkeypatch, capsys):
    "Issue 8: `--resume` with an edited config.yaml or `--set` changing what already trained (lr, loss) is refused in one line; nothing is written."
    from restorekit.train import train_cli
    monkeypatch.chdir(tmp_path)
    assert run_cli(train_cli, 'restorekit-train', ['--preset', 'demo', '--run-dir', 'run', '--set', *TINY]) == 0
    capsys.readouterr()
    before = _hashes(tmp_path)
    err = _refused(['--resume', '--run-dir', 'run', '--set', 'lr=0.5'], capsys, ["'lr'", 'new run', 'pretrained='])
    assert 'loss' not in err
    assert _hashes(tmp_path) == before
    d = yaml.safe_load((tmp_path / 'run' / 'config.yaml').read_text())   # the run's config.yaml, edited
    d['lr'], d['loss']['l1'] = 0.5, 2.0
    (tmp_path / 'run' / 'config.yaml').write_text(yaml.safe_dump(d, sort_keys=False))
    edited = _hashes(tmp_path)
    _refused(['--resume', '--run-dir', 'run'], capsys, ["'lr'", "'loss.l1' changed (1.0 -> 2.0)", 'config.yaml'])
    assert _hashes(tmp_path) == edited


def test_resume_applies_allowed_changes(tmp_path, monkeypatch, capsys):
    "Issue 8: the keys that may change on resume (e.g. checkpoint_every, threads) take effect and are written to config.yaml."
    from restorekit.train import RESUME_CHANGEABLE, train_cli
    assert {'device', 'threads', 'num_workers', 'checkpoint_every'} == set(RESUME_CHANGEABLE)
    run, saved = tmp_path / 'run', []
    class Boom(Exception): pass
    orig = CheckpointEvery.save
    def save_then_crash(self):
        p = orig(self); saved.append(self.learn.train_iter)
        if self.learn.train_iter == 10 and len(saved) == 1: raise Boom('killed at iteration 10')
        return p
    monkeypatch.setattr(CheckpointEvery, 'save', save_then_crash)
    with pytest.raises(Boom): train(tiny_config(), run_dir=run, verbose=False)
    monkeypatch.chdir(tmp_path)
    assert run_cli(train_cli, 'restorekit-train', ['--resume', '--run-dir', 'run', '--set', 'checkpoint_every=5', 'threads=2']) == 0
    assert saved == [10, 15, 20]                                    # the new checkpoint_every took effect
    cfg = load_config(run / 'config.yaml')
    assert (cfg.checkpoint_every, cfg.threads, cfg.lr) == (5, 2, 1e-3)   # ... and config.yaml is the config that ran
    before = _hashes(tmp_path)                                      # the changed run resumes with its own config, not another
    _refused(['--resume', '--run-dir', 'run', '--set', 'validate_every=5'], capsys, ["'validate_every'"])
    assert _hashes(tmp_path) == before


def test_valid_folder_holding_the_run_is_refused(tmp_path, monkeypatch, capsys, photos_writer):
    "Issue 9: a validation folder that is, or contains, the run folder is refused in one line, for new runs and resumes; nothing is written."
    from restorekit.train import train_cli
    monkeypatch.chdir(tmp_path)
    photos_writer(tmp_path / 'data', 2, h=96, w=128)
    before = _hashes(tmp_path)
    for rd in ('data', 'data/run'):   # the validation folder itself, a folder inside it
        _refused(['--preset', 'demo', '--run-dir', rd, '--set', *TINY, 'valid=data'], capsys, ['valid', 'run folder'])
        assert _hashes(tmp_path) == before and not (tmp_path / 'data' / 'run').exists()
    # a finished run moved into its validation folder
    assert run_cli(train_cli, 'restorekit-train', ['--preset', 'demo', '--run-dir', 'a/run', '--set', *TINY, 'valid=data']) == 0
    capsys.readouterr()
    (tmp_path / 'a' / 'run').rename(tmp_path / 'data' / 'run')
    before = _hashes(tmp_path)
    _refused(['--resume', '--run-dir', 'data/run'], capsys, ['valid', 'run folder'])
    assert _hashes(tmp_path) == before
