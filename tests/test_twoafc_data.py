"""`restorekit.twoafc`: BAPPS loaders, the official 2AFC/JND scores, `download_bapps` and the synthetic `make_2afc` set.

The scores are checked against the `lpips` package's own `score_2afc_dataset` / `score_jnd_dataset` / `voc_ap` (fed
through a stand-in data loader), the loaders against torchvision's `Resize` + `Normalize` (the official transform) on
a fixture written in the exact BAPPS layout, and the downloader on local `file://` archives built from that fixture.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import restorekit.twoafc as T
from restorekit.core import sample_images
from restorekit.twoafc import (BAPPS_2AFC, BAPPS_JND, BAPPS_URLS, BAPPSDownloadError, BAPPSLayoutError, JNDDataset, Observer,
                               TwoAFCDataset, bapps_2afc, bapps_jnd, download_bapps, make_2afc, score_2afc, score_jnd, voc_ap,
                               write_bapps_fixture)


def tree(root: Path) -> dict:
    "relative path -> sha256 of every file below `root`."
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(root).rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def fx(tmp_path_factory) -> Path:
    "A BAPPS-layout fixture: 2afc val traditional + cnn (5 items each, 64 px) and JND val traditional + cnn."
    return write_bapps_fixture(tmp_path_factory.mktemp('bapps'), categories=('traditional', 'cnn'), n=5, jnd=True)


def copy_cat(fx: Path, tmp_path: Path, cat='cnn') -> Path:
    d = tmp_path / 'c' / cat
    shutil.copytree(fx / '2afc' / 'val' / cat, d)
    return d


# ---------------------------------------------------------------- scores

def official_2afc(d0, d1, gts):
    "lpips.trainer.score_2afc_dataset on the given distances, through a stand-in data loader."
    trainer = pytest.importorskip('lpips.trainer')
    class Loader:
        def load_data(self):
            yield dict(ref=torch.zeros(len(d0)), p0=torch.as_tensor(d0, dtype=torch.float64), p1=torch.as_tensor(d1, dtype=torch.float64),
                       judge=torch.as_tensor(gts, dtype=torch.float64))
    return trainer.score_2afc_dataset(Loader(), lambda ref, p: p)


def official_jnd(ds, sames):
    trainer = pytest.importorskip('lpips.trainer')
    class Loader:
        def load_data(self):
            yield dict(p0=torch.as_tensor(ds, dtype=torch.float64), p1=None, same=torch.as_tensor(sames, dtype=torch.float64))
    return trainer.score_jnd_dataset(Loader(), lambda p0, p1: p0)[0]


def test_score_2afc_hand_cases():
    # right (1 - h), wrong (h), tie (0.5), with soft labels
    m, s = score_2afc([0.1, 0.5, 0.3, 0.2], [0.2, 0.4, 0.3, 0.9], [0.2, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(s, [0.8, 0.6, 0.5, 0.0])
    assert m == pytest.approx(np.mean([0.8, 0.6, 0.5, 0.0]))
    assert score_2afc(torch.tensor([1., 1.]), np.array([1., 1.]), [0., 1.])[0] == 0.5    # ties score 1/2 whatever h
    assert score_2afc([1.0], [2.0], [0.0])[0] == 1.0 and score_2afc([2.0], [1.0], [0.0])[0] == 0.0


def test_score_2afc_matches_official():
    rng = np.random.default_rng(0)
    for _ in range(10):
        n = 200
        d0 = rng.integers(0, 8, n) / 8.0                      # coarse values: many ties
        d1 = rng.integers(0, 8, n) / 8.0
        h = rng.integers(0, 6, n) / 5.0
        ref, extra = official_2afc(d0, d1, h)
        mine, scores = score_2afc(d0, d1, h)
        assert mine == pytest.approx(ref, abs=1e-12)
        np.testing.assert_allclose(scores, extra['scores'], atol=1e-12)


def test_score_2afc_refuses_bad_input():
    with pytest.raises(ValueError, match='d0 has 2 values, d1 1'): score_2afc([1, 2], [1], [0, 1])
    with pytest.raises(ValueError, match=r'\[0, 1\]'): score_2afc([1], [2], [1.5])
    with pytest.raises(ValueError, match='empty'): score_2afc([], [], [])


def test_voc_ap_matches_lpips():
    lpips = pytest.importorskip('lpips')
    rng = np.random.default_rng(1)
    for n in (1, 2, 5, 50, 300):
        for _ in range(10):
            rec = np.sort(rng.integers(0, 10, n) / 10.0)       # repeated recalls, as at ties of TP
            prec = rng.random(n)
            assert voc_ap(rec, prec) == pytest.approx(float(lpips.voc_ap(rec, prec)), abs=1e-12)
    assert voc_ap([0.5, 1.0], [1.0, 0.5]) == pytest.approx(0.75)
    assert voc_ap([1.0], [1.0]) == 1.0


def test_score_jnd_matches_official():
    rng = np.random.default_rng(2)
    for _ in range(20):
        n = int(rng.integers(5, 200))
        d = rng.random(n)                                     # distinct distances: the sort order is unique
        same = rng.integers(0, 4, n) / 3.0
        if same.sum() == 0: same[0] = 1
        assert score_jnd(d, same) == pytest.approx(float(official_jnd(d, same)), abs=1e-12)
    # hand case: the two "same" pairs ranked first -> perfect; ranked after a "different" one -> envelope 2/3
    assert score_jnd([0.1, 0.2, 0.3], [1, 1, 0]) == 1.0
    assert score_jnd([0.3, 0.2, 0.1], [1, 1, 0]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match='no pair was judged the same'): score_jnd([0.1, 0.2], [0, 0])


# ---------------------------------------------------------------- loaders

def test_fixture_layout_is_official(fx):
    for cat in ('traditional', 'cnn'):
        d = fx / '2afc' / 'val' / cat
        assert sorted(p.name for p in d.iterdir()) == ['judge', 'p0', 'p1', 'ref']
        assert sorted(p.name for p in (d / 'judge').iterdir()) == [f'{i:06d}.npy' for i in range(5)]
        assert sorted(p.name for p in (d / 'ref').iterdir()) == [f'{i:06d}.png' for i in range(5)]
        assert sorted(p.name for p in (fx / 'jnd' / 'val' / cat).iterdir()) == ['p0', 'p1', 'same']


def test_twoafc_loader_reads_fixture(fx):
    dirs = [fx / '2afc' / 'val' / 'traditional', fx / '2afc' / 'val' / 'cnn']
    ds = TwoAFCDataset(dirs)
    assert len(ds) == 10 and ds.category == ['traditional'] * 5 + ['cnn'] * 5 and ds.category_names == ('traditional', 'cnn')
    assert ds.root == fx and ds.synthetic is False and ds.load_size == 64 and ds.input_range == (0, 1)
    assert ds.judge.shape == (10,) and ds.judge.dtype == torch.float32
    for i in (0, 7):
        ref, p0, p1, h = ds[i]
        assert ref.shape == p0.shape == p1.shape == (3, 64, 64) and ref.dtype == torch.float32
        assert h.shape == () and h.dtype == torch.float32
        assert float(h) == pytest.approx(float(np.load(ds.paths[i][3])[0]))
        assert float(ref.min()) >= 0 and float(ref.max()) <= 1
        assert [p.parent.name for p in ds.paths[i]] == ['ref', 'p0', 'p1', 'judge']
        assert len({p.stem for p in ds.paths[i]}) == 1
    # (-1, 1): the official range, the same pixels mapped linearly; in_memory gives the same items
    dm = TwoAFCDataset(dirs, input_range=(-1, 1), in_memory=True)
    for a, b in zip(ds[3][:3], dm[3][:3]): torch.testing.assert_close(b, a * 2 - 1, atol=1e-6, rtol=0)
    assert float(dm[3][0].min()) >= -1 and float(dm[3][0].min()) < 0
    # a DataLoader batches them
    ref, p0, p1, h = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert ref.shape == (4, 3, 64, 64) and h.shape == (4,)


def test_loader_resizes_like_the_official_transform(tmp_path):
    "256-px patches through the official torchvision transform (Resize(64), ToTensor, Normalize(.5, .5)) == input_range (-1, 1)."
    tv = pytest.importorskip('torchvision.transforms')
    root = write_bapps_fixture(tmp_path, n=3, size=256, seed=5)
    ds = bapps_2afc(root, categories='traditional', input_range=(-1, 1))
    official = tv.Compose([tv.Resize(64), tv.ToTensor(), tv.Normalize((0.5,) * 3, (0.5,) * 3)])
    for i in range(3):
        for k in range(3):
            want = official(Image.open(ds.paths[i][k]).convert('RGB'))
            torch.testing.assert_close(ds[i][k], want, atol=1e-6, rtol=0)
    assert ds[0][0].shape == (3, 64, 64)
    assert bapps_2afc(root, categories='traditional', load_size=256)[0][0].shape == (3, 256, 256)


def test_jnd_loader(fx):
    ds = bapps_jnd(fx)
    assert ds.category_names == BAPPS_JND['val'] and len(ds) == 10 and ds.same.shape == (10,)
    p0, p1, same = ds[2]
    assert p0.shape == p1.shape == (3, 64, 64) and same.shape == ()
    assert float(same) == pytest.approx(float(np.load(ds.paths[2][2])[0]))
    assert ((ds.same * 3).round() - ds.same * 3).abs().max() < 1e-5
    assert isinstance(JNDDataset(fx / 'jnd' / 'val' / 'cnn', input_range=(-1, 1))[0][0], torch.Tensor)


def test_bapps_2afc_finds_categories(fx):
    with pytest.raises(BAPPSLayoutError, match='has no categories superres, deblur, color, frameinterp .present: cnn, traditional.'):
        bapps_2afc(fx)                                       # the paper's six val categories by default
    assert bapps_2afc(fx, categories=['cnn']).category_names == ('cnn',)
    assert len(bapps_2afc(fx / '2afc', categories=('traditional', 'cnn'))) == 10    # root/<split>/<category> also works
    with pytest.raises(BAPPSLayoutError, match="no 2afc 'train' split"): bapps_2afc(fx, 'train')
    with pytest.raises(BAPPSLayoutError, match='is not a folder'): bapps_2afc(fx / 'nowhere')
    with pytest.raises(ValueError, match='lo < hi'): bapps_2afc(fx, categories='cnn', input_range=(1, -1))
    with pytest.raises(ValueError, match='given twice'): TwoAFCDataset([fx / '2afc' / 'val' / 'cnn'] * 2)
    assert set(BAPPS_2AFC) == {'train', 'val'} and BAPPS_2AFC['train'] == ('traditional', 'cnn', 'mix')


def test_loaders_write_nothing(fx):
    before = tree(fx)
    bapps_2afc(fx, categories=['cnn', 'traditional'], in_memory=True)[0]
    bapps_jnd(fx)[0]
    assert tree(fx) == before and not list(fx.glob('.*'))


@pytest.mark.parametrize('edit, message', [
    (lambda d: shutil.rmtree(d / 'judge'), r'missing subfolder\(s\) judge/'),
    (lambda d: (d / 'p1' / '000004.png').unlink(), r'file counts differ \(ref/ 5, p0/ 5, p1/ 4, judge/ 5\)'),
    (lambda d: (d / 'judge' / '000003.npy').rename(d / 'judge' / '000042.npy'), r'ref/000003.png has no 000003.\* in judge/'),
    (lambda d: (d / 'p0' / '000001.png').rename(d / 'p0' / 'x.png'), r'ref/000001.png has no 000001.\* in p0/'),
    (lambda d: Image.new('RGB', (32, 32)).save(d / 'p0' / '000002.png'), r'p0/000002.png: 32x32, but 000002.png of the same item is 64x64'),
    (lambda d: Image.new('RGB', (64, 40)).save(d / 'ref' / '000000.png'), r'ref/000000.png: 64x40 is not square'),
    (lambda d: (d / 'p1' / '000003.png').write_bytes(b'not a png'), r'p1/000003.png: not a readable image'),
    (lambda d: np.save(d / 'judge' / '000000.npy', np.array([1.5])), r'judge/000000.npy: value 1.5 is not a fraction'),
    (lambda d: np.save(d / 'judge' / '000001.npy', np.array([np.nan])), r'judge/000001.npy: value nan'),
    (lambda d: np.save(d / 'judge' / '000002.npy', np.array([0.2, 0.4])), r'judge/000002.npy: holds float64 of shape \(2,\)'),
    (lambda d: (d / 'judge' / '000004.npy').write_text('0.5'), r'judge/000004.npy: not a readable .npy'),
])
def test_malformed_layouts_are_refused(fx, tmp_path, edit, message):
    d = copy_cat(fx, tmp_path)
    edit(d)
    with pytest.raises(BAPPSLayoutError, match=message) as e: TwoAFCDataset(d)
    assert '\n' not in str(e.value)


def test_empty_and_missing_folders(tmp_path):
    d = tmp_path / 'cat'
    for s in ('ref', 'p0', 'p1', 'judge'): (d / s).mkdir(parents=True)
    with pytest.raises(BAPPSLayoutError, match='is empty'): TwoAFCDataset(d)
    with pytest.raises(BAPPSLayoutError, match='is not a folder'): TwoAFCDataset(tmp_path / 'nope')
    (d / 'ref' / '.DS_Store').write_bytes(b'x')              # hidden and foreign files are ignored, as officially
    (d / 'judge' / 'notes.txt').write_text('x')
    with pytest.raises(BAPPSLayoutError, match='is empty'): TwoAFCDataset(d)


# ---------------------------------------------------------------- download_bapps

def tarball(src_dir: Path, arcname: str, out: Path) -> Path:
    with tarfile.open(out, 'w:gz') as tf: tf.add(src_dir, arcname=arcname)
    return out


@pytest.fixture
def no_network(monkeypatch):
    "urlopen fails as it does offline; the calls are recorded."
    calls = []
    def fail(url, *a, **k):
        calls.append(url); raise urllib.error.URLError('[Errno -2] Name or service not known')
    monkeypatch.setattr(urllib.request, 'urlopen', fail)
    monkeypatch.delenv('RESTOREKIT_OFFLINE', raising=False)
    return calls


def test_download_offline_env_tries_nothing(tmp_path, no_network, monkeypatch):
    monkeypatch.setenv('RESTOREKIT_OFFLINE', '1')
    dest = tmp_path / 'bapps'
    with pytest.raises(BAPPSDownloadError) as e: download_bapps(dest)
    msg = str(e.value)
    assert no_network == [] and not dest.exists()
    assert 'RESTOREKIT_OFFLINE' in msg and '\n' not in msg
    for part in ('2afc_train', '2afc_val', 'jnd'): assert BAPPS_URLS[part] in msg
    assert f"tar -xzf twoafc_val.tar.gz -C {dest / '2afc'}" in msg and str(dest / '2afc' / 'val' / 'traditional' / 'ref') in msg
    assert f"tar -xzf jnd.tar.gz -C {dest}" in msg and f"root={str(dest)!r}" in msg
    assert isinstance(e.value, OSError)


def test_download_failure_is_one_clear_error(tmp_path, no_network):
    dest = tmp_path / 'bapps'
    with pytest.raises(BAPPSDownloadError) as e: download_bapps(dest, parts=('2afc_val',))
    msg = str(e.value)
    assert no_network == [BAPPS_URLS['2afc_val']]
    assert 'URLError' in msg and f"tar -xzf twoafc_val.tar.gz -C {dest / '2afc'}" in msg and BAPPS_URLS['2afc_val'] in msg
    assert list(dest.iterdir()) == []                        # no partial download left
    with pytest.raises(ValueError, match='unknown BAPPS part'): download_bapps(dest, parts=('2afc_test',))


@pytest.fixture
def val_archive(tmp_path, monkeypatch):
    "A twoafc_val-style archive (all six categories, 2 triplets each) served from a file:// URL."
    monkeypatch.delenv('RESTOREKIT_OFFLINE', raising=False)
    src = write_bapps_fixture(tmp_path / 'src', categories=BAPPS_2AFC['val'], n=2, seed=3)
    (tmp_path / 'srv').mkdir()
    arc = tarball(src / '2afc' / 'val', 'val', tmp_path / 'srv' / 'twoafc_val.tar.gz')
    monkeypatch.setitem(BAPPS_URLS, '2afc_val', arc.as_uri())
    return arc


def test_download_extracts_and_records_sha(tmp_path, val_archive, capsys):
    dest = tmp_path / 'bapps'
    sha = hashlib.sha256(val_archive.read_bytes()).hexdigest()
    assert download_bapps(dest, parts=('2afc_val',), checksums={'2afc_val': sha}) == dest
    out = capsys.readouterr().out
    assert '2afc_val:' in out and 'unpacking' in out
    ds = bapps_2afc(dest)
    assert len(ds) == 12 and ds.category_names == BAPPS_2AFC['val']
    rec = json.loads((dest / 'bapps_sha256.json').read_text())
    assert rec['2afc_val']['sha256'] == sha and rec['2afc_val']['verified'] is True and rec['2afc_val']['url'] == val_archive.as_uri()
    assert sorted(p.name for p in dest.iterdir()) == ['2afc', 'bapps_sha256.json']   # our own download was removed after unpacking
    before = tree(dest)
    download_bapps(dest, parts=('2afc_val',))                # complete: skipped, nothing touched
    assert 'already in' in capsys.readouterr().out and tree(dest) == before


def test_download_checksum_mismatch_removes_download(tmp_path, val_archive):
    dest = tmp_path / 'bapps'
    with pytest.raises(BAPPSDownloadError, match='not 0{64} .the checksum you gave.; the download was removed'):
        download_bapps(dest, parts=('2afc_val',), checksums={'2afc_val': '0' * 64})
    assert list(dest.iterdir()) == []
    with pytest.raises(ValueError, match='SHA-256 hex'): download_bapps(dest, parts=('2afc_val',), checksums={'2afc_val': 'abc'})


def test_download_compares_with_recorded_sha(tmp_path, val_archive):
    dest = tmp_path / 'bapps'
    download_bapps(dest, parts=('2afc_val',))
    shutil.rmtree(dest / '2afc')                             # the user removed the data; the archive on the server changed
    src = write_bapps_fixture(tmp_path / 'src2', categories=BAPPS_2AFC['val'], n=3, seed=9)
    tarball(src / '2afc' / 'val', 'val', val_archive)
    with pytest.raises(BAPPSDownloadError, match='recorded in'): download_bapps(dest, parts=('2afc_val',))
    assert sorted(p.name for p in dest.iterdir()) == ['bapps_sha256.json']


def test_download_uses_and_keeps_a_local_archive(tmp_path, no_network, monkeypatch):
    "An archive fetched by hand into dest is unpacked without network (even with RESTOREKIT_OFFLINE) and not deleted."
    monkeypatch.setenv('RESTOREKIT_OFFLINE', '1')
    src = write_bapps_fixture(tmp_path / 'src', categories=BAPPS_JND['val'], n=2, jnd=True)
    dest = tmp_path / 'bapps'; dest.mkdir()
    tarball(src / 'jnd', 'jnd', dest / 'jnd.tar.gz')
    download_bapps(dest, parts='jnd')
    assert no_network == [] and (dest / 'jnd.tar.gz').is_file() and len(bapps_jnd(dest)) == 4


def test_extraction_refuses_escape_and_overwrite(tmp_path, monkeypatch):
    monkeypatch.delenv('RESTOREKIT_OFFLINE', raising=False)
    dest = tmp_path / 'bapps'; (dest / '2afc').mkdir(parents=True)
    evil = tmp_path / 'evil.tar.gz'
    with tarfile.open(evil, 'w:gz') as tf:
        data = b'gotcha'
        import io
        info = tarfile.TarInfo('../../escaped.txt'); info.size = len(data); tf.addfile(info, io.BytesIO(data))
    monkeypatch.setitem(BAPPS_URLS, '2afc_val', evil.as_uri())
    with pytest.raises(BAPPSDownloadError, match='would land outside'): download_bapps(dest, parts=('2afc_val',))
    assert not (tmp_path / 'escaped.txt').exists() and not (dest / 'bapps_sha256.json').exists()
    (dest / 'twoafc_val.tar.gz').unlink()                    # the failed download is kept (and said so); drop it
    # a file already where the archive would put one: refused before anything is written, the file untouched
    src = write_bapps_fixture(tmp_path / 'src', categories=BAPPS_2AFC['val'], n=2)
    arc = tarball(src / '2afc' / 'val', 'val', tmp_path / 'ok.tar.gz')
    monkeypatch.setitem(BAPPS_URLS, '2afc_val', arc.as_uri())
    mine = dest / '2afc' / 'val' / 'cnn' / 'judge' / '000001.npy'
    mine.parent.mkdir(parents=True); mine.write_bytes(b'my own file')
    with pytest.raises(BAPPSDownloadError, match='already exists; refusing to overwrite'): download_bapps(dest, parts=('2afc_val',))
    assert mine.read_bytes() == b'my own file'
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob('*') if p.is_file()) == ['2afc/val/cnn/judge/000001.npy', 'twoafc_val.tar.gz']


# ---------------------------------------------------------------- make_2afc

@pytest.fixture(scope='module')
def sources(tmp_path_factory) -> Path:
    "Eight photo-like source images (copies of bundled photos, so the inputs can be checked for changes)."
    d = tmp_path_factory.mktemp('sources')
    for p in sample_images()[:8]: shutil.copy(p, d / p.name)
    return d


@pytest.fixture(scope='module')
def syn(tmp_path_factory, sources) -> Path:
    return make_2afc(sources, tmp_path_factory.mktemp('syn') / 'set', n_train=400, n_val=100, seed=0)


def test_make_2afc_layout_and_record(syn, sources):
    assert sorted(p.name for p in syn.iterdir()) == ['2afc', 'README.txt', 'observer.json']
    meta = json.loads((syn / 'observer.json').read_text())
    assert meta['judgments'] == 'synthetic' and 'not human' in meta['note'] and meta['seed'] == 0
    assert meta['observer'] == dict(weights=T.DEFAULT_WEIGHTS, gamma=0.8, tau=0.15, n_judges=5)
    assert set(meta['families']) == set(T.DISTORTION_FAMILIES) and meta['families']['jpeg']['table']['1.00'] == 10
    tr, va = meta['splits']['train'], meta['splits']['val']
    assert tr['counts'] == {'within': 200, 'across': 200} and va['counts'] == {'within': 50, 'across': 50}
    assert not set(tr['sources']) & set(va['sources']) and len(va['sources']) == 2      # 25% of 8, disjoint
    assert sorted(tr['sources'] + va['sources']) == sorted(p.name for p in sources.iterdir())
    assert not set(tr['source_sha256'].values()) & set(va['source_sha256'].values())
    readme = (syn / 'README.txt').read_text()
    assert readme.startswith('SYNTHETIC 2AFC JUDGMENTS - NOT HUMAN DATA') and 'not with human perception' in readme
    for split in ('train', 'val'):
        ds = bapps_2afc(syn, split)
        assert ds.synthetic and ds.category_names == ('within', 'across') and 'SYNTHETIC' in repr(ds)
        used = {r['source'] for r in ds.info}
        assert used <= set(meta['splits'][split]['sources'])                 # every triplet from its own split's sources
        assert ds[0][0].shape == (3, 64, 64)
    for cat in ('within', 'across'):
        assert sorted(p.name for p in (syn / '2afc' / 'train' / cat).iterdir()) == ['judge', 'p0', 'p1', 'ref', 'triplets.jsonl']


def test_make_2afc_labels(syn):
    ds = bapps_2afc(syn, 'train')
    k = ds.judge.double() * 5
    assert (k - k.round()).abs().max() < 1e-5 and set(k.round().int().tolist()) <= set(range(6))   # soft labels k/5
    assert len(set(k.round().int().tolist())) >= 4
    info = ds.info
    for i, r in enumerate(info):
        assert (r['p0']['family'] == r['p1']['family']) == (ds.category[i] == 'within')
        assert float(ds.judge[i]) == pytest.approx(r['h'], abs=1e-6) and r['votes_p1'] == round(r['h'] * 5)
        if ds.category[i] == 'within': assert r['p0']['severity'] != r['p1']['severity']
    w = np.array([c == 'within' for c in ds.category])
    milder1 = np.array([r['p1']['severity'] < r['p0']['severity'] for r in info])
    h = ds.judge.numpy()
    # within a family the milder distortion is closer: judges pick it well above chance, both ways round
    assert h[w & milder1].mean() > 0.7 and h[w & ~milder1].mean() < 0.3
    assert (h[w & milder1] > 0.5).mean() > 0.75
    # the labels follow the declared model: mean h close to the mean model probability
    p = np.array([r['p_choose_p1'] for r in info])
    assert abs(h.mean() - p.mean()) < 0.05
    # ... and the pixels agree with the severities: an L2 distance orders same-family pairs far above chance
    d0 = torch.stack([((ds[i][0] - ds[i][1]) ** 2).mean() for i in np.nonzero(w)[0]])
    d1 = torch.stack([((ds[i][0] - ds[i][2]) ** 2).mean() for i in np.nonzero(w)[0]])
    assert score_2afc(d0, d1, ds.judge[w])[0] > 0.7


def test_observer_model():
    ob = Observer()
    assert ob.p_choose_p1('blur', 0.3, 'blur', 0.3) == pytest.approx(0.5)
    s = np.array(T.SEVERITIES)
    assert (np.diff(ob.psi(['noise'] * len(s), s)) > 0).all()                # monotone in severity
    assert ob.psi('noise', 0.5) > ob.psi('blur', 0.5)                         # declared: noise counts more than blur
    want = 1 / (1 + math.exp(-(1.5 * 0.2 ** 0.8 - 1.0 * 0.6 ** 0.8) / 0.15))
    assert float(ob.p_choose_p1('noise', 0.2, 'blur', 0.6)) == pytest.approx(want)
    for bad in (dict(tau=0), dict(gamma=-1), dict(n_judges=0), dict(weights={'blur': -1})):
        with pytest.raises(ValueError): Observer(**bad)
    with pytest.raises(ValueError, match='no weight for jpeg'): Observer(weights={'blur': 1.0}).psi('jpeg', 0.5)


def test_make_2afc_deterministic(tmp_path, sources):
    a = make_2afc(sources, tmp_path / 'a', n_train=40, n_val=20, seed=3)
    b = make_2afc(sources, tmp_path / 'b', n_train=40, n_val=20, seed=3)
    c = make_2afc(sources, tmp_path / 'c', n_train=40, n_val=20, seed=4)
    ta, tb, tc = tree(a), tree(b), tree(c)
    assert ta == tb                                          # byte-identical: PNGs, judge files, records
    assert sum(k.endswith('.npy') for k in ta) == 60 and sum(k.endswith('.png') for k in ta) == 180
    assert {k: v for k, v in ta.items() if '/ref/' in k} != {k: v for k, v in tc.items() if '/ref/' in k}
    assert [ta[k] for k in sorted(ta) if k.endswith('.npy')] != [tc.get(k) for k in sorted(ta) if k.endswith('.npy')]


def test_make_2afc_explicit_val_images(tmp_path, sources):
    imgs = sorted(sources.iterdir())
    d = make_2afc(imgs[:5], tmp_path / 'd', n_train=20, n_val=10, val_images=imgs[5:])
    meta = json.loads((d / 'observer.json').read_text())
    assert meta['splits']['val']['sources'] == [p.name for p in imgs[5:]]
    assert meta['splits']['train']['sources'] == [p.name for p in imgs[:5]]
    with pytest.raises(ValueError, match='share source images'):
        make_2afc(imgs[:5], tmp_path / 'e', n_train=20, n_val=10, val_images=imgs[4:])
    shutil.copy(imgs[0], tmp_path / 'renamed.png')               # same content under another name
    with pytest.raises(ValueError, match='share source images: renamed.png'):
        make_2afc(imgs[:5], tmp_path / 'f', n_train=20, n_val=10, val_images=[tmp_path / 'renamed.png'])
    assert not (tmp_path / 'e').exists() and not (tmp_path / 'f').exists()
    only_train = make_2afc(imgs[:2], tmp_path / 'g', n_train=10, n_val=0)
    assert sorted(p.name for p in (only_train / '2afc').iterdir()) == ['train']


def test_make_2afc_refuses_nonempty_dest(tmp_path, sources):
    dest = tmp_path / 'dest'; dest.mkdir(); (dest / 'mine.txt').write_text('keep me')
    before = tree(tmp_path)
    with pytest.raises(FileExistsError, match='not empty') as e: make_2afc(sources, dest, n_train=10, n_val=5)
    assert '\n' not in str(e.value) and tree(tmp_path) == before
    assert 'overwrite=True (--overwrite)' in str(e.value)                   # the flag of `restorekit-2afc make` too
    with pytest.raises(FileExistsError, match='holds no observer.json from make_2afc'):
        make_2afc(sources, dest, n_train=10, n_val=5, overwrite=True)
    assert tree(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ['dest']
    (tmp_path / 'file').write_text('x')
    with pytest.raises(FileExistsError, match='is a file'): make_2afc(sources, tmp_path / 'file', n_train=10, n_val=5)


def test_judgment_provenance(tmp_path):
    syn = make_2afc(sample_images()[:3], tmp_path / 'syn', n_train=6, n_val=3)
    bapps = write_bapps_fixture(tmp_path / 'bapps', categories=BAPPS_2AFC['val'][:2], n=2, jnd=True)
    write_bapps_fixture(bapps, split='train', categories=BAPPS_2AFC['train'], n=2)
    mine = write_bapps_fixture(tmp_path / 'mine', categories=('traditional', 'ours'), n=2)
    assert [T.judgment_provenance(p) for p in (syn, syn / '2afc', bapps, bapps / '2afc', mine, tmp_path / 'missing')] == [
        'synthetic', 'synthetic', 'human (BAPPS)', 'human (BAPPS)', 'unknown provenance', 'unknown provenance']
    flat = write_bapps_fixture(tmp_path / 'flat', categories=('cnn',), n=2) / '2afc'     # root/<split>/<category> of the archive
    assert T.judgment_provenance(flat) == 'human (BAPPS)'
    (bapps / '2afc' / 'test').mkdir()                                                      # a split BAPPS does not have
    assert T.judgment_provenance(bapps) == 'unknown provenance'


def test_make_2afc_overwrite_removes_only_its_own(tmp_path, sources):
    dest = make_2afc(sources, tmp_path / 'dest', n_train=20, n_val=10, seed=1)
    (dest / 'notes.txt').write_text('my notes')
    (dest / 'extra').mkdir(); (dest / 'extra' / 'keep.bin').write_bytes(b'\x00')
    old = tree(dest)
    make_2afc(sources, dest, n_train=30, n_val=10, seed=2, overwrite=True)
    new = tree(dest)
    assert new['notes.txt'] == old['notes.txt'] and new['extra/keep.bin'] == old['extra/keep.bin']
    assert json.loads((dest / 'observer.json').read_text())['seed'] == 2
    assert len(bapps_2afc(dest, 'train')) == 30
    assert sum(k.endswith('.npy') for k in new) == 40                       # old triplets gone, new ones in
    assert sorted(p.name for p in tmp_path.iterdir()) == ['dest']           # no temp folders left beside it


def test_make_2afc_writes_nothing_outside_dest_and_keeps_inputs(tmp_path, sources):
    before_src = tree(sources)
    work = tmp_path / 'work'; work.mkdir()
    make_2afc(sources, work / 'set', n_train=20, n_val=10, verbose=True)
    assert sorted(p.name for p in work.iterdir()) == ['set'] and tree(sources) == before_src


def test_make_2afc_verbose_says_synthetic(tmp_path, sources, capsys):
    make_2afc(sources, tmp_path / 's', n_train=10, n_val=4, verbose=True)
    assert 'SYNTHETIC judgments' in capsys.readouterr().out


def test_make_2afc_validates(tmp_path, sources):
    with pytest.raises(ValueError, match='families must be'): make_2afc(sources, tmp_path / 'x', families=['blur', 'sharpen'])
    with pytest.raises(ValueError, match='no weight for noise'):
        make_2afc(sources, tmp_path / 'x', observer=Observer(weights={'blur': 1.0}), families=['blur', 'noise'])
    with pytest.raises(ValueError, match='at least two families'): make_2afc(sources, tmp_path / 'x', n_train=10, n_val=0, families=['blur'])
    with pytest.raises(ValueError, match='smaller than the 600 px'): make_2afc(sources, tmp_path / 'x', n_train=4, n_val=0, size=600)
    with pytest.raises(ValueError, match='n_train must be'): make_2afc(sources, tmp_path / 'x', n_train=-1)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    one = make_2afc(sources, tmp_path / 'one', n_train=10, n_val=0, families=['blur', 'jpeg'])
    assert {r['p0']['family'] for r in bapps_2afc(one, 'train').info} <= {'blur', 'jpeg'}


def test_apply_distortion_monotone():
    x = torch.from_numpy(np.asarray(Image.open(sample_images()[0]).convert('RGB'))[100:164, 200:264].copy()).permute(2, 0, 1)[None].double() / 255
    g = torch.Generator().manual_seed(0)
    for fam in T.DISTORTION_FAMILIES:
        errs = [float((T.apply_distortion(x, fam, [s], generator=g) - x).abs().mean()) for s in (0.05, 0.3, 0.6, 1.0)]
        assert errs == sorted(set(errs)), (fam, errs)
        y = T.apply_distortion(x.repeat(3, 1, 1, 1), fam, [0.2, 0.5, 0.9], generator=g)
        assert y.shape == (3, 3, 64, 64) and float(y.min()) >= 0 and float(y.max()) <= 1
        assert torch.equal(y, (y * 255).round() / 255)                      # 8-bit levels
