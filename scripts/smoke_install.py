#!/usr/bin/env python
"""Smoke test of restorekit as users install it: `pip install restorekit`, no extras.

scripts/test-install runs it in a fresh venv that holds only the wheel and its default dependencies, from a folder
outside the checkout (so the checkout's restorekit/ cannot be imported by accident). Not a pytest file on purpose: it
tests the installed package, not the source tree.

Usage:
  python smoke_install.py            the installed package: every public module imports, every console script's
                                     --help works, a tiny training runs, and missing extras are named clearly
  python smoke_install.py --run DIR  a finished `restorekit-train` run folder (the README's demo): its outputs exist
                                     with the permissions `open` would give, and the README's upscale and export
                                     commands work on it (export: names the extra it needs)

Every check prints `ok` or `FAIL` with its time; the exit status is 1 if any failed.
"""
from __future__ import annotations

import argparse, importlib, importlib.metadata as md, importlib.util, json, math, os, pkgutil, shutil, subprocess, sys
import tempfile, time, traceback, warnings
from pathlib import Path

PUBLIC = ['core', 'silver', 'kernels', 'imresize', 'degrade', 'perceptual', 'losses', 'metrics', 'models', 'learner',
          'callbacks', 'train', 'inference', 'upscale', 'export', 'eco', 'twoafc', 'twoafc_train', 'twoafc_run']
SCRIPTS = ['restorekit-silver', 'restorekit-train', 'restorekit-upscale', 'restorekit-export', 'restorekit-2afc']
EXTRAS = {'onnx': 'export', 'onnxruntime': 'export', 'accelerate': 'distributed'}   # optional packages: their extra
DEV_ONLY = ['nbdev', 'pytest', 'hypothesis']
RUN_FILES = ['config.yaml', 'best.safetensors', 'log.jsonl', 'loss_curve.png', 'comparison.png', 'summary.json',
             'checkpoint/last.json']
BIN = Path(sys.executable).parent
failures: list[str] = []


def check(name):
    "Decorator: run the check now, print ok/FAIL and its time, record a failure (with its traceback) and go on."
    def run(f):
        t = time.perf_counter()
        try: f()
        except Exception as e:
            failures.append(name)
            print(f"FAIL {name} ({time.perf_counter() - t:.1f}s): {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(); sys.stdout.flush()
        else: print(f"ok   {name} ({time.perf_counter() - t:.1f}s)", flush=True)
        return f
    return run


def sh(*args, timeout=300) -> subprocess.CompletedProcess:
    "Run a console script of this venv; its output as text."
    return subprocess.run([str(BIN/args[0]), *map(str, args[1:])], capture_output=True, text=True, timeout=timeout)


def umask() -> int:
    m = os.umask(0o077); os.umask(m)   # single-threaded here: no race
    return m


def installed_checks():
    @check("restorekit is the installed wheel, not the checkout or an editable install")
    def _():
        import restorekit
        where = Path(restorekit.__file__).resolve()
        assert where.is_relative_to(Path(sys.prefix).resolve()), f"restorekit imported from {where}, outside {sys.prefix}"
        d = md.distribution('restorekit')
        url = json.loads(d.read_text('direct_url.json') or '{}')
        assert not url.get('dir_info', {}).get('editable'), f"restorekit is an editable install ({url})"
        assert restorekit.__version__ == d.version, (restorekit.__version__, d.version)
        print(f"     restorekit {d.version} from {where.parent}")

    @check("a default install: no optional or dev packages")
    def _():
        extra = [n for n in [*EXTRAS, *DEV_ONLY] if importlib.util.find_spec(n) is not None]
        assert not extra, (f"{', '.join(extra)} installed: this venv is not a plain `pip install restorekit` "
                           "(recreate it: scripts/test-install --fresh)")

    @check("every public module imports, and its __all__ resolves")
    def _():
        import restorekit
        found = sorted(m.name for m in pkgutil.iter_modules(restorekit.__path__) if not m.name.startswith('_'))
        assert set(PUBLIC) <= set(found), f"modules missing from the wheel: {sorted(set(PUBLIC) - set(found))}"
        for name in found:
            mod = importlib.import_module(f'restorekit.{name}')
            missing = [n for n in getattr(mod, '__all__', []) if not hasattr(mod, n)]
            assert not missing, f"restorekit.{name}.__all__ names missing attributes: {missing}"
        print(f"     {', '.join(found)}")

    @check("every console script: --help exits 0")
    def _():
        eps = sorted(e.name for e in md.distribution('restorekit').entry_points if e.group == 'console_scripts')
        assert set(SCRIPTS) <= set(eps), f"console scripts missing: {sorted(set(SCRIPTS) - set(eps))}"
        for name in eps:
            r = sh(name, '--help', timeout=120)
            assert r.returncode == 0 and 'usage:' in r.stdout, f"{name} --help: rc {r.returncode}\n{r.stdout}\n{r.stderr}"
        print(f"     {', '.join(eps)}")

    tmp = Path(tempfile.mkdtemp(prefix='restorekit-smoke-'))
    state = {}
    def need(key):
        if key not in state: raise RuntimeError("not checked: the tiny training above failed")
        return state[key]

    @check("Gold degradation (realesrgan preset) of Silver patches from the bundled photos")
    def _():
        import torch
        from restorekit.core import sample_images
        from restorekit.degrade import Degrader
        from restorekit.silver import SilverStore, build_silver
        imgs = sample_images()
        assert len(imgs) >= 10, f"only {len(imgs)} bundled sample photos"
        build_silver(imgs[:6], tmp/'silver', patch=96, max_per_image=4, verbose=False)
        store = SilverStore(tmp/'silver')
        lq, hq = Degrader('realesrgan', seed=0)(torch.stack([store[i] for i in range(4)]))
        assert lq.shape == (4, 3, 24, 24) and hq.shape == (4, 3, 96, 96), (lq.shape, hq.shape)
        assert torch.isfinite(lq).all() and 0 <= lq.min() and lq.max() <= 1

    @check("tiny training: restoration_dls + restoration_learner + fit_iters")
    def _():
        from restorekit.core import sample_images
        from restorekit.learner import default_metrics, restoration_dls, restoration_learner
        from restorekit.losses import RestorationLoss
        from restorekit.models import save_weights
        dls = restoration_dls(tmp/'silver', sample_images()[8:10], bs=4, patch=32, scale=2, degrade='bicubic',
                              epoch_len=5, valid_crop=64, device='cpu', seed=0)
        learn = restoration_learner(dls, 'edsr_baseline', loss=RestorationLoss(l1=1, ms_ssim=0.2, lpips=0),
                                    metrics=default_metrics(2, lpips=False), lr=1e-3,
                                    model_kw={'n_feats': 8, 'n_blocks': 2}, seed=0)
        with learn.no_bar(), learn.no_logging(): learn.fit_iters(10)
        losses = [float(v) for v in learn.recorder.losses]
        assert len(losses) == 10 and all(math.isfinite(l) for l in losses), losses
        names = learn.recorder.metric_names[1:-1]
        vals = dict(zip(names, map(float, learn.recorder.values[-1])))
        assert math.isfinite(vals.get('valid_psnr', math.nan)), vals
        run = tmp/'run'   # a run folder as restorekit-upscale/-export read it: best.safetensors with arch in its header
        save_weights(learn.model, run/'best.safetensors',
                     metadata={'arch': 'edsr_baseline', 'scale': 2, 'model_kw': json.dumps({'n_feats': 8, 'n_blocks': 2})})
        state.update(learn=learn, run=run)
        print(f"     10 iterations, loss {losses[0]:.4f} -> {losses[-1]:.4f}, validation psnr {vals['valid_psnr']:.2f} dB")

    @check("the fastai calls: default learner offline, validate, predict, show_results, save/load, export/load_learner")
    def _():
        import warnings
        from restorekit.core import sample_images
        from restorekit.learner import restoration_dls, restoration_learner
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            from fastai.learner import load_learner
        dls = restoration_dls(tmp/'silver', sample_images()[8:10], bs=4, patch=32, scale=2, degrade='bicubic', epoch_len=3,
                              valid_crop=64, device='cpu')
        learn = restoration_learner(dls, model_kw={'n_feats': 8, 'n_blocks': 1}, path=tmp/'contract')   # every default
        assert learn.loss_func.term_names == ['l1', 'ms_ssim'], learn.loss_func.term_names        # nothing to download
        with learn.no_bar(), learn.no_logging():
            before = [float(v) for v in learn.validate()]
            learn.fit_iters(3)
            pil, out, _ = learn.predict(sample_images()[8])
            learn.show_results(max_n=2, show=False)
            learn.save('stage'); learn.load('stage')
            learn.export(tmp/'contract'/'export.pkl')
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                back = load_learner(tmp/'contract'/'export.pkl')
            same = bool((back.predict(sample_images()[8])[1] == out).all())
        assert all(math.isfinite(v) for v in before) and same and pil.size == (out.shape[2], out.shape[1])

    @check("restorekit-upscale with the tiny model")
    def _(): upscale(need('run'), tmp/'up', scale=2)

    @check("restorekit-export without onnx says to install restorekit[export]")
    def _(): export_needs_extra(need('run'), tmp)

    @check("restorekit-2afc: a tiny lin metric on the offline set (synthetic judgments), scored, then a restoration loss")
    def _():
        run = tmp/'afc'
        r = sh('restorekit-2afc', 'train', '--preset', 'demo', '--run-dir', run, '--set', 'synthetic.n_train=100', 'synthetic.n_val=50',
               'epochs=1', 'decay_epochs=1', timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        summary = json.loads((run/'summary.json').read_text())
        assert summary['judgments'] == 'synthetic' and 0 <= summary['val_2afc'] <= 1
        r = sh('restorekit-2afc', 'score', '--metric', run, '--data', run/'synthetic', '--json')
        assert r.returncode == 0 and abs(json.loads(r.stdout)['twoafc'] - summary['val_2afc']) < 1e-6, r.stdout + r.stderr
        from restorekit.losses import RestorationLoss
        import torch
        crit = RestorationLoss(l1=1., ms_ssim=0., lpips=1., lpips_model=run/'metric')
        assert math.isfinite(float(crit(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))))

    @check("learn.distrib_ctx() without accelerate says to install restorekit[distributed]")
    def _():
        learn = need('learn')
        try:
            with learn.distrib_ctx(): pass
        except ImportError as e:
            assert "restorekit[distributed]" in str(e), f"the ImportError does not name the extra: {e}"
            print(f"     {e}")
        else: raise AssertionError("learn.distrib_ctx() ran without accelerate installed")

    shutil.rmtree(tmp, ignore_errors=True)


def upscale(run: Path, out: Path, scale: int):
    "The README's `restorekit-upscale IMAGES -o OUT --model RUN --tile auto`, on one bundled photo."
    from restorekit.core import load_image, sample_images
    src = sample_images()[10]   # camera.png, 512x512 gray
    r = sh('restorekit-upscale', src, '-o', out, '--model', run, '--tile', 'auto', timeout=600)
    assert r.returncode == 0, f"rc {r.returncode}\n{r.stdout}\n{r.stderr}"
    outs = [p for p in out.rglob('*') if p.is_file() and p.suffix.lower() in ('.png', '.jpg', '.tif', '.tiff', '.webp')]
    assert len(outs) == 1, (outs, r.stdout)
    h, w = load_image(src).shape[1:]
    assert load_image(outs[0]).shape[1:] == (h * scale, w * scale), (outs[0], load_image(outs[0]).shape)


def export_needs_extra(run: Path, tmp: Path):
    "The README's `restorekit-export RUN --onnx x.onnx` (and with --no-check) fails, naming restorekit[export]."
    for extra_args in ([], ['--no-check']):
        dest = tmp/'x.onnx'
        r = sh('restorekit-export', run, '--onnx', dest, *extra_args, timeout=300)
        assert r.returncode != 0, f"restorekit-export {' '.join(extra_args)} succeeded without onnx?\n{r.stdout}"
        assert "pip install 'restorekit[export]'" in r.stderr, f"the error does not name the extra:\n{r.stderr}"
        assert 'Traceback' not in r.stderr, r.stderr
        assert not dest.exists()
        print(f"     {r.stderr.strip().splitlines()[-1]}")


def run_checks(run: Path):
    "Checks on a finished run folder (the README's demo)."
    @check(f"the run folder has the README's outputs ({', '.join(RUN_FILES)})")
    def _():
        missing = [f for f in RUN_FILES if not (run/f).is_file()]
        assert not missing, f"missing in {run}: {missing}"
        s = json.loads((run/'summary.json').read_text())
        print(f"     summary: {json.dumps({k: v for k, v in s.items() if not isinstance(v, (dict, list))})[:400]}")

    @check("the trained model beats bicubic on the validation photos")
    def _():
        s = json.loads((run/'summary.json').read_text())
        assert s['psnr_model'] > s['psnr_bicubic'], f"model {s['psnr_model']:.2f} dB <= bicubic {s['psnr_bicubic']:.2f} dB"

    @check("every file of the run has the mode open() gives (0o666 & ~umask)")
    def _():
        want, files = 0o666 & ~umask(), sorted(p for p in run.rglob('*') if p.is_file())
        modes = {str(p.relative_to(run)): oct(p.stat().st_mode & 0o777) for p in files}
        print(f"     umask {oct(umask())}: " + ', '.join(f'{k} {v}' for k, v in modes.items()))
        wrong = {k: v for k, v in modes.items() if v != oct(want)}
        assert not wrong, f"not {oct(want)}: {wrong}"

    tmp = Path(tempfile.mkdtemp(prefix='restorekit-smoke-run-'))

    @check("restorekit-upscale --model RUN")
    def _():
        import yaml
        upscale(run, tmp/'up', scale=int(yaml.safe_load((run/'config.yaml').read_text())['scale']))

    @check("restorekit-export RUN --onnx without onnx says to install restorekit[export]")
    def _(): export_needs_extra(run, tmp)

    shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--run', type=Path, help='check a finished restorekit-train run folder instead')
    a = ap.parse_args()
    warnings.filterwarnings('ignore', category=FutureWarning)   # fastai at import (torch.jit.script deprecation)
    t = time.perf_counter()
    print(f"restorekit smoke test: python {sys.version.split()[0]} at {sys.executable}, cwd {os.getcwd()}", flush=True)
    run_checks(a.run.resolve()) if a.run else installed_checks()
    print(f"{'FAILED: ' + '; '.join(failures) if failures else 'all checks passed'} ({time.perf_counter() - t:.0f}s)", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == '__main__': main()
