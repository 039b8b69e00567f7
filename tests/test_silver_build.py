"""`restorekit.silver`: build_silver over the bad-input corpus, resume/idempotency, SilverStore and the CLI."""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import patience   # hang guards scaled by the machine's load
from restorekit.core import load_image
from restorekit.silver import (
    SilverStore,
    build_silver,
    contact_sheet,
    cut_patches,
    grid_starts,
)

P = 64  # patch size used throughout


def _data(dest) -> bytes: return (Path(dest) / 'patches.u8').read_bytes()
def _meta(dest) -> dict: return json.loads((Path(dest) / 'meta.json').read_text())
def _journal(dest) -> list[dict]: return [json.loads(l) for l in (Path(dest) / 'journal.jsonl').read_text().splitlines()]


def _expected_patches(paths, patch=P, stride=None, min_std=5.0) -> bytes:
    "The store bytes computed independently: load each usable file upright as 8-bit RGB and cut it."
    out = []
    for p in paths:
        img = load_image(p, mode='RGBA')
        arr = (img[:3].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        ps, _ = cut_patches(arr, patch, stride or patch // 2, min_std)
        out.append(ps.tobytes())
    return b''.join(out)


def _build(src, dest, **kw):
    kw = {'patch': P, 'n_workers': 0, 'verbose': False, **kw}
    return build_silver(src, dest, **kw)


# ---------------------------------------------------------------- building over the bad corpus

def test_build_over_corpus_skips_and_uses_the_documented_files(corpus_with_photos, tmp_path):
    c = corpus_with_photos
    dest = tmp_path / 'store'
    rep = _build(c.root, dest)                          # never raises

    assert (dest / 'report.json').exists()
    on_disk = json.loads((dest / 'report.json').read_text())
    assert on_disk == json.loads(json.dumps(rep))

    skipped = {s['file']: s['reason'] for s in rep['skipped']}
    assert set(skipped) == set(c.skipped), skipped
    for name, reason in skipped.items():
        assert c.skipped[name] in reason, (name, reason)

    ok = {r['src'] for r in _journal(dest) if r['status'] == 'ok'}
    assert ok == c.used
    assert rep['n_ok'] == len(c.used) == 9
    assert rep['n_skipped'] == len(c.skipped) == 8
    assert rep['n_sources'] == len(c.used) + len(c.skipped)
    assert rep['ignored_non_images'] == ['readme.txt']
    assert rep['changed_since_stored'] == []

    ds = SilverStore(dest)
    assert rep['n_patches'] == len(ds) == _meta(dest)['count'] > 0
    assert rep['n_new_patches'] == rep['n_patches']
    assert _meta(dest)['complete'] is True
    assert len(_data(dest)) == rep['n_patches'] * P * P * 3
    # every used source contributes patches, in sorted-name order, back to back
    srcs = ds.sources()
    assert [r['src'] for r in srcs] == sorted(c.used)
    assert [r['start'] for r in srcs] == list(np.cumsum([0] + [r['count'] for r in srcs[:-1]]))
    assert ds.source_of(0) == srcs[0]['src'] and ds.source_of(len(ds) - 1) == srcs[-1]['src']
    # 16-bit files are recorded as such
    bits = {r['src']: r.get('bits') for r in _journal(dest) if r['status'] == 'ok'}
    assert bits['rgb16.png'] == bits['gray16.png'] == 16 and bits['cmyk.jpg'] == 8


def test_corpus_store_bytes_match_independent_cut(corpus_with_photos, tmp_path):
    "The stored patches are exactly the upright 8-bit RGB images cut on the grid (EXIF, CMYK, 16-bit included)."
    c = corpus_with_photos
    dest = tmp_path / 'store'
    _build(c.root, dest, min_std=0)
    assert _data(dest) == _expected_patches([c[n] for n in sorted(c.used)], min_std=0)
    # the EXIF-rotated file went in upright: its first patch is the top-left of the raw pixels turned 90 deg clockwise
    rec = next(r for r in _journal(dest) if r['src'] == 'exif_rot6.jpg')
    assert rec['count'] == len(grid_starts(96, P, P // 2)) * len(grid_starts(80, P, P // 2))
    raw = np.asarray(Image.open(c['exif_rot6.jpg']).convert('RGB'))          # (80, 96, 3), not transposed
    upright = np.rot90(raw, -1)                                               # (96, 80, 3)
    first = SilverStore(dest, dtype=torch.uint8).read(rec['start'])
    np.testing.assert_array_equal(first, upright[:P, :P])
    assert not np.array_equal(first, raw[:P, :P])


def test_build_with_workers_matches_in_process(corpus_with_photos, tmp_path):
    "Built in a thread that is not the main one: the workers (which die with the thread that started them) do the work."
    c = corpus_with_photos
    _build(c.root, tmp_path / 'a', n_workers=0)
    with warnings.catch_warnings(), ThreadPoolExecutor(1) as ex:
        warnings.simplefilter('error')                        # no falling back to decoding in-process
        rep = ex.submit(_build, c.root, tmp_path / 'b', n_workers=2).result()
    assert _data(tmp_path / 'a') == _data(tmp_path / 'b')
    assert {s['file'] for s in rep['skipped']} == set(c.skipped)


def test_build_follows_the_rest_of_the_documented_table(tmp_path):
    "Gray and 16-bit gray TIFF are used; LA / palette with transparency and float TIFF are skipped."
    src = tmp_path / 'src'; src.mkdir()
    rng = np.random.default_rng(1)
    noise = lambda *shape: rng.integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(noise(80, 80), 'L').save(src / 'gray.png')
    Image.fromarray(rng.integers(0, 65536, (80, 80)).astype(np.uint16)).save(src / 'gray16.tif')
    Image.fromarray(np.dstack([noise(80, 80), np.full((80, 80), 100, np.uint8)]), 'LA').save(src / 'la.png')
    Image.fromarray(noise(80, 80, 3)).convert('P').save(src / 'ptrans.png', transparency=0)
    Image.fromarray(rng.random((80, 80)).astype(np.float32), 'F').save(src / 'float.tif')
    rep = _build(src, tmp_path / 'store')
    skipped = {s['file']: s['reason'] for s in rep['skipped']}
    assert set(skipped) == {'la.png', 'ptrans.png', 'float.tif'}
    assert 'transparent' in skipped['la.png'] and 'transparent' in skipped['ptrans.png']
    assert 'unsupported pixel mode' in skipped['float.tif']
    ok = {r['src']: r for r in _journal(tmp_path / 'store') if r['status'] == 'ok'}
    assert set(ok) == {'gray.png', 'gray16.tif'} and ok['gray16.tif']['bits'] == 16


def test_build_does_not_store_wrapped_32bit_tiff(tmp_path):
    src = tmp_path / 'src'; src.mkdir()
    ramp = np.tile(np.linspace(0, 2**20, 80).astype(np.int32), (80, 1))       # increases left to right
    Image.fromarray(ramp, 'I').save(src / 'int32.tif')
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(src / 'ok.png')
    rep = _build(src, tmp_path / 'store', min_std=0)
    skipped = {s['file']: s['reason'] for s in rep['skipped']}
    assert 'unsupported pixel mode' in skipped['int32.tif']
    assert [r['src'] for r in _journal(tmp_path / 'store') if r['status'] == 'ok'] == ['ok.png']


# ---------------------------------------------------------------- idempotency and parameters

def test_second_build_is_idempotent(corpus_with_photos, tmp_path):
    c, dest = corpus_with_photos, tmp_path / 'store'
    rep1 = _build(c.root, dest)
    data1, journal1 = _data(dest), _journal(dest)
    rep2 = _build(c.root, dest)
    assert rep2['n_new_patches'] == 0
    assert rep2['n_patches'] == rep1['n_patches'] == len(SilverStore(dest))
    assert _data(dest) == data1
    assert _journal(dest) == journal1
    assert {s['file'] for s in rep2['skipped']} == set(c.skipped)


def test_changed_parameters_are_refused_and_overwrite_rebuilds(corpus_with_photos, tmp_path):
    c, dest = corpus_with_photos, tmp_path / 'store'
    rep = _build(c.root, dest)
    data = _data(dest)
    with pytest.raises(ValueError, match=r'patch: 64 -> 32'):
        _build(c.root, dest, patch=32)
    with pytest.raises(ValueError, match=r'seed: 0 -> 3'):
        _build(c.root, dest, seed=3)
    with pytest.raises(ValueError, match=r'stride: 32 -> 16'):
        _build(c.root, dest, stride=16)
    assert _data(dest) == data and _meta(dest)['complete']          # refusals changed nothing
    assert len(SilverStore(dest)) == rep['n_patches']

    rep32 = _build(c.root, dest, patch=32, overwrite=True)
    ds = SilverStore(dest)
    assert ds.patch == 32 and len(ds) == rep32['n_patches'] == rep32['n_new_patches'] > rep['n_patches']
    assert len(_data(dest)) == len(ds) * 32 * 32 * 3
    assert {s['file'] for s in rep32['skipped']} == set(c.skipped)


def test_store_files_without_meta_are_refused(corpus_with_photos, tmp_path):
    dest = tmp_path / 'store'; dest.mkdir()
    (dest / 'patches.u8').write_bytes(b'\0' * 100)
    with pytest.raises(ValueError, match='meta.json'):
        _build(corpus_with_photos.root, dest)


def test_changed_source_is_reported_not_recut(corpus_with_photos, tmp_path, photos_writer):
    c, dest = corpus_with_photos, tmp_path / 'store'
    rep = _build(c.root, dest)
    photos_writer(c.root, 1, h=120, w=150, seed0=99)   # overwrites photo_00.png with other content
    os.utime(c['photo_00.png'], ns=(1, 1))
    rep2 = _build(c.root, dest)
    assert rep2['changed_since_stored'] == ['photo_00.png']
    assert rep2['n_new_patches'] == 0 and rep2['n_patches'] == rep['n_patches']


# ---------------------------------------------------------------- resume after a kill

def test_resume_after_simulated_kill_equals_one_go_build(corpus_with_photos, tmp_path):
    c = corpus_with_photos
    ref = tmp_path / 'ref'
    rep_ref = _build(c.root, ref)

    names = sorted(p.name for p in c.root.iterdir() if p.suffix != '.txt')
    k = names.index('gray16.png') + 1          # a prefix of the build order, with used and skipped files
    dest = tmp_path / 'resumed'
    _build([c[n] for n in names[:k]], dest)
    n_first = len(SilverStore(dest))
    assert 0 < n_first < rep_ref['n_patches']

    # what a SIGKILL between writing the next file's patches and finishing its journal line leaves behind
    with open(dest / 'patches.u8', 'ab') as f: f.write(os.urandom(P * P * 3 + 1234))
    with open(dest / 'journal.jsonl', 'a') as f: f.write('{"src": "palette.png", "size": 41')
    meta = _meta(dest); meta['complete'] = False
    (dest / 'meta.json').write_text(json.dumps(meta))
    with pytest.raises(ValueError, match='interrupted'):
        SilverStore(dest)

    rep = _build(c.root, dest)
    assert rep['n_new_patches'] == rep_ref['n_patches'] - n_first
    assert rep['n_patches'] == rep_ref['n_patches'] == len(SilverStore(dest))
    assert _data(dest) == _data(ref)
    strip = lambda j: [(r['src'], r['status'], r.get('start'), r.get('count')) for r in j]
    assert strip(_journal(dest)) == strip(_journal(ref))           # torn line gone, all lines valid JSON
    assert _meta(dest)['complete'] is True
    assert {s['file'] for s in rep['skipped']} == set(c.skipped)


_KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    import restorekit.silver as s
    _orig = s._process_source
    def _slow(*a):                      # only slows the build down so the kill lands mid-way
        time.sleep(0.1)
        return _orig(*a)
    s._process_source = _slow
    s.build_silver(sys.argv[1], sys.argv[2], patch=64, n_workers=0, verbose=False)
""")


def test_resume_after_real_sigkill_equals_uninterrupted_build(tmp_path, photos_writer):
    src = tmp_path / 'src'
    photos_writer(src, 40, h=128, w=160, exts=('.png', '.jpg'))
    ref = tmp_path / 'ref'
    rep_ref = _build(src, ref)
    assert rep_ref['n_ok'] == 40

    dest = tmp_path / 'killed'
    proc = subprocess.Popen([sys.executable, '-c', _KILL_SCRIPT, str(src), str(dest)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = dest / 'journal.jsonl'
    deadline = time.monotonic() + patience(60)
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and journal.read_text().count('\n') >= 1: break
            time.sleep(0.005)
        assert proc.poll() is None, f"build finished/failed before it could be killed: {proc.stderr.read()!r}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None: proc.kill()
        proc.wait(timeout=patience(30))
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    n_lines = journal.read_text().count('\n')
    assert 1 <= n_lines < 40
    assert _meta(dest)['complete'] is False
    with pytest.raises(ValueError, match='interrupted'):
        SilverStore(dest)

    rep = _build(src, dest)
    assert rep['n_ok'] == 40 and rep['n_skipped'] == 0
    assert rep['n_patches'] == rep_ref['n_patches'] == len(SilverStore(dest))
    assert 0 < rep['n_new_patches'] < rep_ref['n_patches']
    assert _data(dest) == _data(ref)
    assert [r['src'] for r in _journal(dest)] == [r['src'] for r in _journal(ref)]


# ---------------------------------------------------------------- decoding workers

_NO_GUARD_SCRIPT = """\
import sys
from restorekit.silver import build_silver
rep = build_silver(sys.argv[1], sys.argv[2], patch=64, n_workers=2, verbose=False)   # no `if __name__ == '__main__':`
print(rep['n_patches'])
"""


def test_script_without_main_guard_builds_in_process(tmp_path, photos_writer):
    """A script calling build_silver with workers but no main guard: its spawned workers re-import it and stop at once
    (no second build); the build falls back to decoding in-process, completes, and says so in one warning line."""
    src = tmp_path / 'src'; photos_writer(src, 6)
    script = tmp_path / 'build.py'; script.write_text(_NO_GUARD_SCRIPT)
    dest = tmp_path / 'store'
    # the limit only stops a hang: the run starts two workers that each import torch (seconds on a loaded machine)
    r = subprocess.run([sys.executable, str(script), str(src), str(dest)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=patience(600), check=False)
    assert r.returncode == 0, r.stderr
    assert 'Traceback' not in r.stderr and 'Error' not in r.stderr, r.stderr
    warns = [l for l in r.stderr.splitlines() if 'Warning' in l]
    assert len(warns) == 1, r.stderr
    assert "if __name__ == '__main__':" in warns[0] and 'n_workers=0' in warns[0], warns[0]
    assert len(r.stderr.splitlines()) <= 2, r.stderr          # the warning, and the source line Python shows with it
    assert _meta(dest)['complete'] is True
    assert r.stdout.split() == [str(len(SilverStore(dest)))]  # the script ran its build once, in one process
    _build(src, tmp_path / 'ref')
    assert _data(dest) == _data(tmp_path / 'ref')
    assert [j['src'] for j in _journal(dest)] == [j['src'] for j in _journal(tmp_path / 'ref')]   # each file once


_STALLED_WORKERS_SCRIPT = """\
import os, sys, time
from pathlib import Path

marks = Path(os.environ['MARKS'])

def stall(stage):
    "Leave a mark that this worker reached `stage`, then wait until the test releases that stage."
    (marks / f'{stage}-{os.getpid()}').touch()
    while not (marks / f'release-{stage}').exists(): time.sleep(0.05)

class Stall:
    "Import hook: `import restorekit.silver` is the 'import' stage."
    def find_spec(self, name, path=None, target=None):
        if name == 'restorekit.silver': stall('import')

if __name__ == '__mp_main__':       # a spawned worker re-imports this script first: the 'start' stage
    sys.meta_path.insert(0, Stall())
    stall('start')
if __name__ == '__main__':
    from restorekit.silver import build_silver
    build_silver(sys.argv[1], sys.argv[2], patch=64, n_workers=2, verbose=False)
"""


def _alive(pid: int) -> bool:
    "Whether `pid` runs (a zombie, dead but not yet reaped, counts as dead)."
    try: return Path(f'/proc/{pid}/status').read_text().split('State:')[1].split()[0] != 'Z'
    except (FileNotFoundError, IndexError): return False


def _children(pid: int) -> set[int]:
    "Ids of the child processes of `pid` (Linux)."
    out = set()
    for t in Path(f'/proc/{pid}/task').iterdir():
        try: out |= {int(k) for k in (t / 'children').read_text().split()}
        except FileNotFoundError: pass
    return out


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='PR_SET_PDEATHSIG and /proc are Linux')
@pytest.mark.parametrize('stage', ['start', 'import'])
def test_workers_still_starting_die_with_a_killed_build(tmp_path, photos_writer, stage):
    """SIGKILL a build while its workers are still starting, stalled in their re-import of the script ('start': they go
    on once the build is dead) or in `import restorekit.silver` ('import': they stay stalled). No worker outlives the
    build, and after 'start' none gets as far as importing restorekit.silver."""
    src = tmp_path / 'src'; photos_writer(src, 8)
    script = tmp_path / 'build.py'; script.write_text(_STALLED_WORKERS_SCRIPT)
    marks = tmp_path / 'marks'; marks.mkdir()
    (marks / f"release-{'import' if stage == 'start' else 'start'}").touch()
    proc = subprocess.Popen([sys.executable, str(script), str(src), str(tmp_path / 'dest')], cwd=tmp_path,
                            env={**os.environ, 'MARKS': str(marks)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pids = set()
    try:
        # progress, not time: wait until both workers reached the stage (well under a second; the bound ends a broken run)
        end = time.monotonic() + patience(300)
        while time.monotonic() < end and proc.poll() is None and len(pids) < 2:
            pids = {int(p.name.split('-')[1]) for p in marks.glob(f'{stage}-*')}
            time.sleep(0.05)
        assert proc.poll() is None and len(pids) == 2, f"the workers did not reach {stage!r}: {proc.stderr.read()!r}"
        pids |= _children(proc.pid)                           # and the resource tracker
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if stage == 'start': (marks / 'release-start').touch()
        # they die at once (PR_SET_PDEATHSIG, or their first look at their parent); the bound only ends a failing
        # run (workers stalled for ever) and is generous for a loaded machine
        end = time.monotonic() + patience(120)
        while time.monotonic() < end and any(_alive(p) for p in pids): time.sleep(0.1)
        assert not [p for p in pids if _alive(p)], 'worker processes outlived the killed build'
        if stage == 'start': assert not list(marks.glob('import-*')), 'a worker went on to import restorekit.silver'
    finally:
        if proc.poll() is None: proc.kill(); proc.wait()
        proc.stderr.close()
        for p in pids:
            if _alive(p): os.kill(p, signal.SIGKILL)


# ---------------------------------------------------------------- determinism

def test_subsets_are_deterministic_per_seed(corpus_with_photos, tmp_path):
    c = corpus_with_photos
    r0 = _build(c.root, tmp_path / 's0a', max_per_image=2, seed=0)
    _build(c.root, tmp_path / 's0b', max_per_image=2, seed=0)
    _build(c.root, tmp_path / 's1', max_per_image=2, seed=1)
    assert _data(tmp_path / 's0a') == _data(tmp_path / 's0b')
    assert _data(tmp_path / 's0a') != _data(tmp_path / 's1')
    assert len(_data(tmp_path / 's1')) == len(_data(tmp_path / 's0a'))
    assert all(r['count'] <= 2 for r in _journal(tmp_path / 's0a') if r['status'] == 'ok')
    assert r0['n_patches'] == 2 * len(c.used)


def test_subset_does_not_depend_on_which_other_files_are_built(corpus_with_photos, tmp_path):
    "The per-image subset depends on the seed and the file name only, not on build order or neighbours."
    c = corpus_with_photos
    _build(c.root, tmp_path / 'all', max_per_image=3, seed=5)
    _build([c['photo_01.jpg']], tmp_path / 'one', max_per_image=3, seed=5)
    rec = next(r for r in _journal(tmp_path / 'all') if r['src'] == 'photo_01.jpg')
    n = P * P * 3
    assert _data(tmp_path / 'all')[rec['start'] * n:(rec['start'] + rec['count']) * n] == _data(tmp_path / 'one')


# ---------------------------------------------------------------- source errors

def test_empty_source_folder(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='no image files'):
        _build(tmp_path / 'empty', tmp_path / 'store')
    (tmp_path / 'empty' / 'readme.txt').write_text('hi')
    with pytest.raises(ValueError, match='no image files'):
        _build(tmp_path / 'empty', tmp_path / 'store')
    assert not (tmp_path / 'store').exists()


def test_missing_source_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        _build(tmp_path / 'nowhere', tmp_path / 'store')


def test_all_files_skipped(bad_corpus, tmp_path):
    for n in bad_corpus.used: bad_corpus[n].unlink()
    dest = tmp_path / 'store'
    with pytest.raises(ValueError, match='report.json'):
        _build(bad_corpus.root, dest)
    rep = json.loads((dest / 'report.json').read_text())
    assert rep['n_ok'] == 0 and rep['n_patches'] == 0
    assert {s['file'] for s in rep['skipped']} == set(bad_corpus.skipped)
    with pytest.raises(ValueError, match='no patches'):
        SilverStore(dest)


@pytest.mark.parametrize('kw,match', [({'patch': 4}, 'patch must be'), ({'stride': -1}, 'stride must be'),
                                      ({'min_std': -1}, 'min_std must be'), ({'max_per_image': 0}, 'max_per_image')])
def test_invalid_parameters(corpus_with_photos, tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        _build(corpus_with_photos.root, tmp_path / 'store', **kw)


# ---------------------------------------------------------------- SilverStore

@pytest.fixture
def small_store(tmp_path, photos_writer):
    src = tmp_path / 'src'
    photos_writer(src, 3, h=100, w=136)
    dest = tmp_path / 'store'
    rep = _build(src, dest)
    return dest, rep


def test_store_reads(small_store):
    dest, rep = small_store
    raw = SilverStore(dest, dtype=torch.uint8)
    assert len(raw) == rep['n_patches']
    data = _data(dest)
    n = P * P * 3
    for i in (0, 1, len(raw) - 1):
        a = raw.read(i)
        assert a.shape == (P, P, 3) and a.dtype == np.uint8
        assert a.tobytes() == data[i * n:(i + 1) * n]
        assert torch.equal(raw[i], torch.from_numpy(a.copy()).permute(2, 0, 1))
    assert torch.equal(raw[-1], raw[len(raw) - 1])
    with pytest.raises(IndexError, match='out of range'):
        raw[len(raw)]
    f = SilverStore(dest)[0]
    assert f.dtype == torch.float32 and f.shape == (3, P, P) and float(f.max()) <= 1
    assert torch.equal(SilverStore(dest, crop=P)[0], f)          # crop == patch: whole patch
    c = SilverStore(dest, crop=32, augment=True)[0]
    assert c.shape == (3, 32, 32)


@pytest.mark.parametrize('crop', [0, -3, P + 1, 1000])
def test_store_wrong_crop(small_store, crop):
    with pytest.raises(ValueError, match='crop must be'):
        SilverStore(small_store[0], crop=crop)


def test_store_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match='not a Silver store'):
        SilverStore(tmp_path / 'nothing')
    (tmp_path / 'plain').mkdir()
    with pytest.raises(FileNotFoundError, match='not a Silver store'):
        SilverStore(tmp_path / 'plain')


def test_store_interrupted_and_truncated(small_store):
    dest, _ = small_store
    meta = _meta(dest)
    (dest / 'meta.json').write_text(json.dumps(dict(meta, complete=False)))
    with pytest.raises(ValueError, match='interrupted'):
        SilverStore(dest)
    (dest / 'meta.json').write_text(json.dumps(meta))
    with open(dest / 'patches.u8', 'r+b') as f: f.truncate(P * P * 3 * (meta['count'] - 1))
    with pytest.raises(ValueError, match='truncated'):
        SilverStore(dest)
    (dest / 'meta.json').write_text(json.dumps(dict(meta, format='something-else')))
    with pytest.raises(ValueError, match='unsupported store format'):
        SilverStore(dest)


def test_store_in_dataloader_with_workers(small_store):
    dest, rep = small_store
    ds = SilverStore(dest, dtype=torch.uint8)
    ds[0]                                     # an fd opened in the parent must not be shared with workers
    dl = torch.utils.data.DataLoader(ds, batch_size=5, shuffle=False, num_workers=2)
    got = torch.cat(list(dl))
    assert got.shape == (rep['n_patches'], 3, P, P)
    expected = torch.from_numpy(np.frombuffer(_data(dest), np.uint8).reshape(-1, P, P, 3).copy()).permute(0, 3, 1, 2)
    assert torch.equal(got, expected)
    dl = torch.utils.data.DataLoader(SilverStore(dest, crop=48, augment=True), batch_size=4, shuffle=True, num_workers=2)
    xb = next(iter(dl))
    assert xb.shape == (4, 3, 48, 48) and xb.dtype == torch.float32


def test_contact_sheet(small_store, tmp_path):
    dest, _ = small_store
    sheet = contact_sheet(SilverStore(dest), tmp_path / 'sheet.png', n=8, ncols=4)
    assert sheet.shape == (3, 2 * (P + 2) + 2, 4 * (P + 2) + 2)
    assert load_image(tmp_path / 'sheet.png').shape == sheet.shape


# ---------------------------------------------------------------- CLI

def _cli() -> Path:
    exe = Path(sys.executable).parent / 'restorekit-silver'
    assert exe.exists(), exe
    return exe


def test_cli_builds_store_and_contact_sheet(corpus_with_photos, tmp_path):
    c, dest = corpus_with_photos, tmp_path / 'cli_store'
    # --n-workers 0: the corpus has 17 image files, which by default would start 2 spawned workers
    # (covered by test_build_with_workers_matches_in_process); in-process keeps this test fast
    r = subprocess.run([str(_cli()), str(dest), '--src', str(c.root), '--patch', str(P), '--n-workers', '0'],
                       capture_output=True, text=True, timeout=patience(120), cwd=tmp_path, check=False)
    assert r.returncode == 0, r.stderr
    assert 'Traceback' not in r.stderr
    sheet = dest / 'contact_sheet.png'
    assert sheet.exists()
    t = load_image(sheet)
    assert t.shape == (3, 4 * (P + 2) + 2, 4 * (P + 2) + 2)
    for name in c.skipped: assert f'skipped {name}:' in r.stdout
    assert 'Contact sheet:' in r.stdout
    rep = json.loads((dest / 'report.json').read_text())
    assert len(SilverStore(dest)) == rep['n_patches']
    _build(c.root, tmp_path / 'api_store')
    assert _data(dest) == _data(tmp_path / 'api_store')           # the CLI builds the same store as the API


def test_cli_error_is_one_line_without_traceback(tmp_path):
    (tmp_path / 'empty').mkdir()
    r = subprocess.run([str(_cli()), str(tmp_path / 'store'), '--src', str(tmp_path / 'empty'), '--patch', str(P)],
                       capture_output=True, text=True, timeout=patience(120), cwd=tmp_path, check=False)
    assert r.returncode != 0
    err = r.stderr.strip()
    assert 'Traceback' not in r.stderr
    assert len(err.splitlines()) == 1, err
    assert err.startswith('restorekit-silver: error:') and 'no image files' in err


# ---------------------------------------------------------------- properties

@settings(max_examples=300, deadline=None)
@given(st.data())
def test_grid_starts_cover_the_side(data):
    size = data.draw(st.integers(1, 400), label='size')
    patch = data.draw(st.integers(1, 450), label='patch')
    stride = data.draw(st.integers(1, max(1, patch)), label='stride')   # stride <= patch: full coverage
    s = grid_starts(size, patch, stride)
    if size < patch:
        assert s == []
        return
    assert s == sorted(s) and len(set(s)) == len(s)
    assert s[0] == 0 and s[-1] == size - patch
    assert all(0 <= a and a + patch <= size for a in s)
    covered = np.zeros(size, bool)
    for a in s: covered[a:a + patch] = True
    assert covered.all()
    assert all(b - a <= stride for a, b in itertools.pairwise(s))


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 300), patch=st.integers(1, 300), stride=st.integers(1, 600))
def test_grid_starts_in_bounds_for_any_stride(size, patch, stride):
    s = grid_starts(size, patch, stride)
    assert s == sorted(set(s))
    assert all(0 <= a and a + patch <= size for a in s)
    if size >= patch: assert s[0] == 0 and s[-1] == size - patch


@settings(max_examples=150, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), patch=st.integers(1, 24), stride=st.integers(1, 30),
       seed=st.integers(0, 2**16))
def test_cut_patches_are_image_slices(h, w, patch, stride, seed):
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ps, n_flat = cut_patches(img, patch, stride, min_std=0)
    pos = [(y, x) for y in grid_starts(h, patch, stride) for x in grid_starts(w, patch, stride)]
    assert n_flat == 0
    assert ps.shape == (len(pos), patch, patch, 3) and ps.dtype == np.uint8
    for p, (y, x) in zip(ps, pos):
        np.testing.assert_array_equal(p, img[y:y + patch, x:x + patch])


def test_dest_inside_src_is_not_read_back(tmp_path, photos_writer):
    "A store (and its contact sheet) written inside the source folder is never taken as a source on rerun."
    src = tmp_path / 'photos'
    photos_writer(src, 2)
    dest = src / 'store'
    rep1 = build_silver(src, dest, patch=64, n_workers=0, verbose=False)
    contact_sheet(SilverStore(dest), dest / 'contact_sheet.png')
    rep2 = build_silver(src, dest, patch=64, n_workers=0, verbose=False)
    assert rep2['n_new_patches'] == 0 and rep2['n_sources'] == rep1['n_sources'] == 2
