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
from conftest import patience, run_cli   # hang guards scaled by the machine's load; a console entry point in this process

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
                          text=True, timeout=patience(300))


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
    first = hashes(d)
    r2 = upscale(d, '-o', d / 'out', '--model', model_file)
    assert r2.returncode == 0 and '0 written, 2 skipped' in r2.stdout, r2.stdout
    assert unchanged(first) and not list((d / 'out').rglob('out'))   # no in/out/in/out/...
    assert (d / 'out' / 'upscale_report-1.json').is_file()            # the first run's report is kept


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
                       capture_output=True, text=True, timeout=patience(300))
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


def test_degrader_half_precision_on_cpu_does_not_hang():
    "Item 6: float16/bfloat16 CPU input is degraded in float32 (it used to spin > 60 s in a depthwise conv)."
    code = ("import torch, time\nfrom restorekit.degrade import Degrader\n"
            "hr = torch.rand(2, 3, 96, 96)\n"
            "for dt in (torch.float16, torch.bfloat16):\n"
            "    lq, hq = Degrader('realesrgan', seed=0)(hr.to(dt))\n"
            "    ref = Degrader('realesrgan', seed=0)(hr.to(dt).float())\n"
            "    assert lq.dtype == hq.dtype == dt, (lq.dtype, hq.dtype)\n"
            "    assert torch.equal(lq, ref[0].to(dt)) and torch.equal(hq, ref[1].to(dt))\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=patience(120))
    assert r.returncode == 0 and 'ok' in r.stdout, r.stderr[-2000:]


class OOMOnFlat(torch.nn.Module):
    "x2 nearest upscaling that runs out of CPU memory (as PyTorch's allocator says it) on a flat mid-gray input, whatever its size."
    def forward(self, x):
        if bool(x.amax() - x.amin() < 1e-6) and 0.4 < float(x.mean()) < 0.6:   # not the zero probe of `infer_scale`
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:116] . DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)")
        return torch.nn.functional.interpolate(x, scale_factor=2, mode='nearest')


def test_upscale_batch_goes_on_after_cpu_out_of_memory(tmp_path):
    "Item 7: one image that exhausts CPU memory (even in the smallest tiles) is reported; the others are written."
    from restorekit.upscale import upscale_batch
    photos(tmp_path / 'in', 'ok.png')
    save_image(torch.full((3, 64, 64), 0.5), tmp_path / 'in' / 'huge.png')
    pairs = [(tmp_path / 'in' / n, tmp_path / 'out' / n) for n in ('huge.png', 'ok.png')]
    with pytest.warns(RuntimeWarning, match='out of memory on cpu'):   # it backs off to smaller tiles first
        rep = upscale_batch(OOMOnFlat(), pairs, progress=False, tile=64, overlap=4, device='cpu')
    assert [f['file'] for f in rep['failed']] == [str(pairs[0][0])] and 'out of memory' in rep['failed'][0]['reason']
    assert [w['file'] for w in rep['written']] == [str(pairs[1][0])] and pairs[1][1].is_file()


def test_upscale_refuses_an_unwritable_output_folder_up_front(tmp_path, model_file):
    "Item 8: the output folder is checked before any image is processed; a one-line error, no traceback."
    photos(tmp_path / 'in', 'a.png')
    r = upscale(tmp_path / 'in', '-o', '/proc/self', '--model', model_file)   # a folder nobody, not even root, can write in
    assert r.returncode == 2 and 'cannot write in the output folder' in r.stderr and 'Traceback' not in r.stderr, r.stderr


def _alive(pid: int) -> bool:
    "Whether `pid` runs (a zombie, dead but not yet reaped by init, counts as dead)."
    try: return Path(f'/proc/{pid}/status').read_text().split('State:')[1].split()[0] != 'Z'
    except (FileNotFoundError, IndexError): return False


@pytest.mark.skipif(not Path('/proc/self/task').is_dir(), reason='reads child processes from /proc (Linux)')
def test_silver_workers_die_with_a_killed_build(tmp_path, photos_writer):
    "Item 9: SIGKILL of a Silver build with decoding workers leaves no worker running (they used to live >= 30 s)."
    import os, signal, time
    src = tmp_path / 'src'; photos_writer(src, 60, h=256, w=320)
    code = "import sys, restorekit.silver as s; s.build_silver(sys.argv[1], sys.argv[2], patch=64, n_workers=2, verbose=False)"
    proc = subprocess.Popen([sys.executable, '-c', code, str(src), str(tmp_path / 'dest')], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kids, deadline = set(), time.monotonic() + patience(120)   # hang guard: the workers start within a second or two
    try:
        while time.monotonic() < deadline and proc.poll() is None and len(kids) < 3:   # 2 workers + the resource tracker
            for t in Path(f'/proc/{proc.pid}/task').iterdir():
                try: kids |= {int(k) for k in (t / 'children').read_text().split()}
                except FileNotFoundError: pass
            time.sleep(0.05)
        assert proc.poll() is None and len(kids) >= 2, f"the build ended before its workers could be seen: {proc.stderr.read()!r}"
        time.sleep(0.5)                      # the workers are decoding
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=patience(60))      # hang guard: a SIGKILLed process is reaped at once
        end = time.monotonic() + patience(120)   # hang guard: PR_SET_PDEATHSIG kills them at once (elsewhere a 0.5 s watchdog)
        while time.monotonic() < end and any(_alive(k) for k in kids): time.sleep(0.1)
        assert not [k for k in kids if _alive(k)], 'worker processes outlived the killed build'
    finally:
        if proc.poll() is None: proc.kill()
        proc.stderr.close()
        for k in kids:
            if _alive(k): os.kill(k, signal.SIGKILL)


@pytest.mark.parametrize('args, msg', [
    (['--preset', 'demo', '--config', '{cfg}'], "config file '{cfg}' is not valid YAML at line 3"),
    (['--preset', 'demo', '--set', 'model_kw={{n_feats: 4'], "the value of override 'model_kw={{n_feats: 4' is not valid YAML"),
    (['--preset', 'demo', '--set', 'valid={bad}', '--run-dir', '{run}'], "cannot read image '{bad}'"),
    (['--preset', 'demo', '--set', 'device=cuda'], 'no CUDA GPU is available here'),
    (['--preset', 'demo', '--set', 'device=gpu0'], 'is not a device name'),
])
def test_train_cli_one_line_errors(tmp_path, args, msg):
    "Item 10: a YAML syntax error, a corrupt validation image, a CUDA device without a GPU: one line, no traceback."
    if 'cuda' in ' '.join(args) and torch.cuda.is_available(): pytest.skip('a GPU is present')
    (tmp_path / 'c.yaml').write_text('n_iter: 5\nlr: [1e-3\n')
    (tmp_path / 'bad.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 40)
    fmt = dict(cfg=tmp_path / 'c.yaml', bad=tmp_path / 'bad.png', run=tmp_path / 'run')
    r = subprocess.run([sys.executable, '-m', 'restorekit.train', *[a.format(**fmt) for a in args]], capture_output=True,
                       text=True, timeout=patience(300))
    assert r.returncode != 0 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert msg.format(**fmt) in r.stderr, r.stderr[-3000:]
    assert len(r.stderr.strip().splitlines()) <= 3, r.stderr
    assert not (tmp_path / 'run').exists()   # refused before the run folder (config.yaml, silver/) was created


def test_model_kw_yaml_errors_name_the_option(tmp_path, model_file):
    photos(tmp_path / 'in', 'a.png')
    r = upscale(tmp_path / 'in', '-o', tmp_path / 'o', '--model', model_file, '--model-kw', '{n_feats: 8')
    assert r.returncode == 2 and '--model-kw is not valid YAML' in r.stderr and 'Traceback' not in r.stderr, r.stderr


def test_degrader_seed_must_be_a_whole_number():
    from restorekit.degrade import Degrader
    for bad in ('a', 1.5, -1, True):
        with pytest.raises(TypeError, match='seed must be a whole number'): Degrader('bicubic', seed=bad)


def write_photos(folder: Path, n: int) -> list[Path]:
    "`n` noise photos of 96x128 (large enough for 48 px Silver patches)."
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    return [save_image(torch.from_numpy(rng.random((3, 96, 128), dtype=np.float32)), folder / f'p{i}.png') for i in range(n)]


def silver(*args):
    return subprocess.run([sys.executable, '-m', 'restorekit.silver', *map(str, args)], capture_output=True, text=True, timeout=patience(300))


@pytest.mark.parametrize('where', ['same', 'parent'])
def test_silver_never_writes_among_its_source_images(tmp_path, where):
    "Item 10: `restorekit-silver SRC --src SRC` (or a dest holding SRC) is refused; nothing is written in the source."
    src = tmp_path / 'photos'; write_photos(src, 2)
    before = hashes(tmp_path)
    r = silver(src if where == 'same' else tmp_path, '--src', src, '--patch', 48)
    assert r.returncode == 1 and 'choose a dest outside the source' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert hashes(tmp_path) == before


def test_silver_refuses_a_folder_of_user_files(tmp_path):
    "A dest holding the user's files (here their own contact_sheet.png) is not a store: refused unchanged."
    src = tmp_path / 'photos'; write_photos(src, 2)
    dest = tmp_path / 'mine'; dest.mkdir(); (dest / 'contact_sheet.png').write_bytes(b'my sheet'); (dest / 'notes.txt').write_text('x')
    before = hashes(tmp_path)
    r = silver(dest, '--src', src, '--patch', 48)
    assert r.returncode == 1 and 'is not a Silver store' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert hashes(tmp_path) == before


@pytest.mark.parametrize('case', ['exists', 'input', 'not_image'])
def test_silver_sheet_never_replaces_a_file(tmp_path, case):
    "--sheet naming an existing file (without --overwrite), a source image (always), or a non-image name: refused first."
    src = tmp_path / 'photos'; imgs = write_photos(src, 2)
    (tmp_path / 'sheet.png').write_bytes(b'mine')
    sheet = {'exists': tmp_path / 'sheet.png', 'input': imgs[0], 'not_image': tmp_path / 'sheet.txt'}[case]
    before = hashes(tmp_path)
    r = silver(tmp_path / 'store', '--src', src, '--patch', 48, '--sheet', sheet, *(['--overwrite'] if case == 'input' else []))
    assert r.returncode == 1 and 'restorekit-silver: error: --sheet' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert hashes(tmp_path) == before and not (tmp_path / 'store').exists()


def test_upscale_rgba_to_jpeg_says_alpha_is_dropped(tmp_path, model_file):
    "Item 10: an RGBA input with transparency written as --ext jpg: one warning line naming the file, not silence."
    (tmp_path / 'in').mkdir()
    a = torch.rand(4, 20, 24); a[3, :5] = 0.2
    save_image(a, tmp_path / 'in' / 'logo.png')
    r = upscale(tmp_path / 'in' / 'logo.png', '-o', tmp_path / 'out', '--model', model_file, '--ext', 'jpg')
    assert r.returncode == 0 and (tmp_path / 'out' / 'logo.jpg').is_file(), r.stderr
    assert "restorekit-upscale: warning:" in r.stderr and 'logo.jpg' in r.stderr and 'transparency dropped' in r.stderr, r.stderr
    assert 'Traceback' not in r.stderr and 'warnings.warn' not in r.stderr, r.stderr    # one line, no source line


def test_lpips_takes_float64_inputs():
    "Item 10: LPIPS on float64 tensors gives the float32 distance, not a torch dtype error."
    from restorekit.perceptual import LPIPS
    lp = LPIPS('alex', trunk='random', heads='random')
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(lp(x.double(), y.double()), lp(x, y))


def export(*args):
    return subprocess.run([sys.executable, '-m', 'restorekit.export', *map(str, args)], capture_output=True, text=True, timeout=patience(300))


def test_export_bad_opset_is_one_line(tmp_path, model_file):
    "Item 10: --opset 99 is refused before exporting: one line on stderr, nothing on stdout (no graph dump), no file."
    r = export(model_file, '--onnx', tmp_path / 'm.onnx', '--opset', 99)
    assert r.returncode == 1 and r.stdout == '' and len(r.stderr.strip().splitlines()) == 1, (r.stdout[:500], r.stderr)
    assert 'opset=99' in r.stderr and '--opset' in r.stderr and not (tmp_path / 'm.onnx').exists()


def test_export_keeps_an_existing_file(tmp_path, model_file):
    "restorekit-export does not replace an existing --onnx file unless --overwrite."
    (tmp_path / 'm.onnx').write_bytes(b'my model')
    before = hashes(tmp_path)
    r = export(model_file, '--onnx', tmp_path / 'm.onnx', '--no-check')
    assert r.returncode == 1 and 'exists' in r.stderr and '--overwrite' in r.stderr, r.stderr
    assert hashes(tmp_path) == before
    assert export(model_file, '--onnx', tmp_path / 'm.onnx', '--no-check', '--overwrite').returncode == 0
    assert (tmp_path / 'm.onnx').read_bytes() != b'my model'


# --- the rule, as a property: random layouts of inputs, outputs, suffixes and existing files ---------------------------
from hypothesis import example, HealthCheck, given, settings, strategies as st   # noqa: E402


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(outdir=st.sampled_from(['out', 'in', 'in/out', 'in/sub', 'in/sub/deeper']), suffix=st.sampled_from(['', '_x2']),
       ext=st.sampled_from([None, 'png', 'jpg']), overwrite=st.booleans(), as_files=st.booleans(),
       existing=st.sets(st.sampled_from(['a', 'a_x2', 'c', 'c_x2', 'notes', 'upscale_report']), max_size=4),
       data=st.data())
def test_upscale_never_touches_what_it_did_not_write(tmp_path_factory, model_file, outdir, suffix, ext, overwrite, as_files, existing, data):
    """restorekit never modifies or deletes a file it did not create in this run, except with --overwrite, and never an input:
    every input is byte-identical after any run; every other file that existed before is unchanged unless --overwrite."""
    from restorekit.upscale import upscale_cli
    root = tmp_path_factory.mktemp('rule')
    photos(root / 'in', 'a.png', 'a_x2.png'); photos(root / 'in' / 'sub', 'c.png')
    out = root / outdir
    out.mkdir(parents=True, exist_ok=True)
    for name in existing:   # files already in the output folder (the user's), some with the names outputs would get
        f = out / (name + ('.json' if name == 'upscale_report' else '.' + (ext or 'png')))
        if not f.exists(): f.write_bytes(b'user data ' + name.encode())
    ins = [root / 'in' / 'a.png', root / 'in' / 'a_x2.png', root / 'in' / 'sub' / 'c.png'] if as_files else [root / 'in']
    ins = data.draw(st.lists(st.sampled_from(ins), min_size=1, max_size=3, unique=True))
    inputs = {p for i in ins for p in ([i] if i.is_file() else i.rglob('*')) if p.is_file() and out not in p.parents}
    argv = [*map(str, ins), '-o', str(out), '--model', str(model_file), '--suffix', suffix, '--quiet']
    argv += (['--ext', ext] if ext else []) + (['--overwrite'] if overwrite else [])
    before = hashes(root)
    upscale_cli(argv)
    after = hashes(root)
    for p in inputs: assert after.get(p) == before[p], f"input {p} changed: {argv}"
    for p, h in before.items():
        if not overwrite: assert after.get(p) == h, f"{p} existed and was changed without --overwrite: {argv}"
        else: assert p in after, f"{p} was deleted: {argv}"


STORE_FILES = ('patches.u8', 'journal.jsonl', 'meta.json', 'report.json', 'contact_sheet.png')


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dest=st.sampled_from(['store', 'in', 'in/store', '.', 'mine', 'prev']), src=st.sampled_from(['in', 'in/sub']),
       sheet=st.sampled_from([None, 'sheet.png', 'in/p0.png', 'new.png']), overwrite=st.booleans(), patch=st.sampled_from([48, 64]))
def test_silver_never_touches_what_it_did_not_write(tmp_path_factory, dest, src, sheet, overwrite, patch):
    """The rule for `restorekit-silver`: inputs are byte-identical after any run; the user's files are unchanged without
    --overwrite; only a store restorekit built earlier (`prev`) may be resumed (its own files updated, its patches kept)."""
    from restorekit.silver import build_silver, silver_cli
    root = tmp_path_factory.mktemp('silver_rule')
    write_photos(root / 'in', 2); write_photos(root / 'in' / 'sub', 1)
    mine = root / 'mine'; mine.mkdir(); (mine / 'contact_sheet.png').write_bytes(b'mine'); (mine / 'report.json').write_text('{}')
    (root / 'sheet.png').write_bytes(b'my sheet')
    build_silver(root / 'in', root / 'prev', patch=48, verbose=False)
    inputs = {p for p in (root / src).rglob('*') if p.is_file()}
    argv = [root / dest, '--src', root / src, '--patch', patch, '--n-workers', 0] + (['--sheet', root / sheet] if sheet else [])
    argv += ['--overwrite'] if overwrite else []
    before = hashes(root)
    rc = run_cli(silver_cli, 'restorekit-silver', argv)
    after = hashes(root)
    ok = (dest not in ('in', '.') and dest != 'mine' and (dest != 'prev' or patch == 48 or overwrite)
          and (sheet != 'in/p0.png' or src == 'in/sub' and overwrite) and (sheet != 'sheet.png' or overwrite))
    assert (rc == 0) == ok, f"exit status {rc} for {argv}"   # the cases above are refused, the others build
    for p in inputs: assert after.get(p) == before[p], f"input {p} changed or was deleted: {argv}"
    for p, h in before.items():
        if p.parent == root / 'mine': assert after.get(p) == h, f"the user's {p.name} was changed, --overwrite or not: {argv}"
        if p in inputs or overwrite: continue
        if p.parent == root / 'prev' and p.name in STORE_FILES and dest == 'prev':   # a resume of restorekit's own store
            assert p in after, f"{p} of the resumed store was deleted: {argv}"
            if p.name == 'patches.u8': assert after[p] == h, f"the resumed store's patches changed: {argv}"
        else: assert after.get(p) == h, f"{p} existed and was changed without --overwrite: {argv}"


@pytest.fixture(scope='module')
def onnx_model(tmp_path_factory):
    "The tiny x2 weights (with their header) in a folder of their own."
    d = tmp_path_factory.mktemp('onnx_model')
    m = create_model('edsr_baseline', 2, seed=0, n_feats=8, n_blocks=1)
    return save_weights(m, d / 'best.safetensors', {'arch': 'edsr_baseline', 'scale': 2, 'model_kw': json.dumps({'n_feats': 8, 'n_blocks': 1})})


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(onnx=st.sampled_from(['m.onnx', 'user.onnx', 'sub/new.onnx', 'models', 'user.pt']), opset=st.sampled_from([17, 99]),
       overwrite=st.booleans())
def test_export_never_touches_what_it_did_not_write(tmp_path_factory, onnx_model, onnx, opset, overwrite):
    "The rule for `restorekit-export`: the weights are never changed; an existing file is replaced only with --overwrite."
    from restorekit.export import export_cli
    root = tmp_path_factory.mktemp('export_rule')
    (root / 'user.onnx').write_bytes(b'my model'); (root / 'user.pt').write_bytes(b'mine'); (root / 'models').mkdir()
    (root / 'models' / 'keep.onnx').write_bytes(b'kept')
    w_before = hashes(onnx_model.parent)
    argv = [onnx_model, '--onnx', root / onnx, '--opset', opset, '--no-check'] + (['--overwrite'] if overwrite else [])
    before = hashes(root)
    rc = run_cli(export_cli, 'restorekit-export', argv)
    after = hashes(root)
    assert hashes(onnx_model.parent) == w_before, f"the weights changed: {argv}"
    for p, h in before.items():
        if overwrite and p == root / onnx: continue
        assert after.get(p) == h, f"{p} existed and was changed: {argv}"
    assert rc == 0 or set(after) == set(before), f"a refused export left files behind: {sorted(set(after) - set(before))}"
    assert (rc == 0) == (opset == 17 and onnx.endswith('.onnx') and (onnx != 'user.onnx' or overwrite)), f"exit status {rc} for {argv}"


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, store, valid_imgs):
    "A finished 2-iteration run, copied into each example that needs one."
    return train(load_config(preset='demo', overrides=TRAIN_RULE + [f'silver={store.path}', f'valid=[{valid_imgs[0]}]']),
                 run_dir=tmp_path_factory.mktemp('fin') / 'run', verbose=False)


TRAIN_RULE = ['n_iter=2', 'validate_every=2', 'checkpoint_every=2', 'patch=32', 'bs=2', 'model_kw.n_blocks=1',
              'model_kw.n_feats=8', 'valid_crop=48', 'threads=1']


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(run_dir=st.sampled_from(['new', 'empty', 'mine', 'done', 'valid']), resume=st.booleans(), n_iter=st.sampled_from([2, 3]))
@example(run_dir='done', resume=True, n_iter=2)   # the one layout that must run: always tried
@example(run_dir='done', resume=True, n_iter=3)
def test_train_never_touches_what_it_did_not_write(tmp_path_factory, store, valid_imgs, finished_run, run_dir, resume, n_iter):
    """The rule for `restorekit-train`: the Silver store and the validation images are byte-identical after any run; the
    user's files are unchanged; only --resume of restorekit's own run (`done`) may update that run's outputs."""
    import shutil
    from restorekit.train import RUN_OUTPUTS, train_cli
    root = tmp_path_factory.mktemp('train_rule')
    write_photos(root / 'valid', 1); (root / 'valid' / 'notes.txt').write_text('my notes')
    (root / 'empty').mkdir(); (root / 'mine').mkdir()
    (root / 'mine' / 'config.yaml').write_text('my: settings\n'); (root / 'mine' / 'notes.txt').write_text('mine')
    shutil.copytree(finished_run, root / 'done')
    s_before, inputs = hashes(store.path), {p for p in (root / 'valid').iterdir()}
    valid = valid_imgs[0] if run_dir == 'done' else root / 'valid' / 'p0.png'   # a resume runs its own config (another valid= is refused)
    argv = ['--preset', 'demo', '--set', *TRAIN_RULE, f'silver={store.path}', f'valid=[{valid}]' if run_dir == 'done' else f'valid={valid}',
            '--n-iter', n_iter, '--run-dir', root / run_dir] + (['--resume'] if resume else [])
    before = hashes(root)
    rc = run_cli(train_cli, 'restorekit-train', argv)
    after = hashes(root)
    ok = (run_dir in ('new', 'empty', 'valid') and not resume) or (run_dir == 'done' and resume and n_iter == 2)
    assert (rc == 0) == ok, f"exit status {rc} for {argv}"   # new/empty/unrelated folders train; a same-length resume runs
    if ok: assert (root / run_dir / 'best.safetensors').is_file()
    assert hashes(store.path) == s_before, f"the Silver store changed: {argv}"
    for p in inputs: assert after.get(p) == before[p], f"input {p} changed: {argv}"
    own = root / 'done'
    for p, h in before.items():
        if resume and run_dir == 'done' and p.is_relative_to(own) and p.relative_to(own).parts[0] in RUN_OUTPUTS: continue
        assert after.get(p) == h, f"{p} existed and was changed: {argv}"
