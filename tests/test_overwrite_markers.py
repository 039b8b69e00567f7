"""--overwrite replaces only files restorekit wrote (known by a marker inside them, never by name); restorekit's own
outputs (a store folder, a contact sheet) are never read back as source images."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import patience   # hang guards scaled by the machine's load
from restorekit.eco import build_centroids
from restorekit.models import create_model
from restorekit.silver import SilverStore, build_silver, list_sources

P = 48


def hashes(root: Path) -> dict:
    "sha256 of every file below `root`."
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob('*')) if p.is_file()}


def photos(folder: Path, n: int = 2, seed: int = 1) -> list[Path]:
    "`n` noise photos of 96x128 (large enough for 48 px patches)."
    folder.mkdir(parents=True, exist_ok=True)
    rng, out = np.random.default_rng(seed), []
    for i in range(n):
        out.append(folder / f'p{i}.png'); Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(out[-1])
    return out


def silver(*args):
    return subprocess.run([sys.executable, '-m', 'restorekit.silver', *map(str, args)], capture_output=True, text=True,
                          timeout=patience(300))


def user_files(d: Path):
    "The user's own meta.json, report.json and contact_sheet.png: restorekit's names, not restorekit's files."
    d.mkdir(parents=True, exist_ok=True)
    (d / 'meta.json').write_text(json.dumps({'camera': 'mine', 'count': 3}))
    (d / 'report.json').write_text(json.dumps({'n_patches': 12, 'skipped': []}))
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(d / 'contact_sheet.png')


@pytest.mark.parametrize('meta', [True, False])
def test_cli_overwrite_never_replaces_user_files_with_store_names(tmp_path, meta):
    "Issue item 1: --overwrite into a folder of the user's meta.json/report.json/contact_sheet.png: refused, nothing changed."
    src = tmp_path / 'photos'; photos(src)
    d = tmp_path / 'DIR'; user_files(d)
    if not meta: (d / 'meta.json').unlink()
    before = hashes(tmp_path)
    r = silver(d, '--src', src, '--patch', P, '--n-workers', 0, '--overwrite')
    err = r.stderr.strip()
    assert r.returncode == 1 and 'Traceback' not in r.stderr and len(err.splitlines()) == 1, r.stderr
    assert err.startswith('restorekit-silver: error:') and ('meta.json' if meta else 'report.json') in err, err
    assert hashes(tmp_path) == before


def test_cli_refusal_does_not_suggest_overwrite_beside_user_files(tmp_path):
    "Issue item 1: the refusal must not suggest --overwrite for a folder of the user's files; following it changes nothing."
    src = tmp_path / 'photos'; photos(src)
    d = tmp_path / 'DIR'; user_files(d); (d / 'meta.json').unlink()
    before = hashes(tmp_path)
    r = silver(d, '--src', src, '--patch', P, '--n-workers', 0)
    assert r.returncode == 1 and 'is not a Silver store' in r.stderr, r.stderr
    assert 'beside' not in r.stderr and 'to build the store' not in r.stderr, r.stderr
    r = silver(d, '--src', src, '--patch', P, '--n-workers', 0, '--overwrite')   # what the old message suggested
    assert r.returncode == 1, r.stderr
    assert hashes(tmp_path) == before


def test_api_overwrite_never_deletes_user_meta(tmp_path):
    "build_silver(..., overwrite=True) into a folder whose meta.json is the user's: refused before deleting anything."
    src = tmp_path / 'photos'; photos(src)
    d = tmp_path / 'DIR'; user_files(d); (d / 'patches.u8').write_bytes(b'my bytes')
    before = hashes(tmp_path)
    with pytest.raises(ValueError, match='meta.json'): build_silver(src, d, patch=P, n_workers=0, overwrite=True, verbose=False)
    assert hashes(tmp_path) == before


def test_overwrite_still_rebuilds_restorekit_store(tmp_path):
    "A store restorekit built (marked meta.json, report.json and contact sheet) is replaced by --overwrite."
    src = tmp_path / 'photos'; photos(src)
    d = tmp_path / 'store'
    assert silver(d, '--src', src, '--patch', P, '--n-workers', 0).returncode == 0
    assert json.loads((d / 'report.json').read_text())['format'] == 'restorekit-silver-report'
    with Image.open(d / 'contact_sheet.png') as im: assert im.info.get('restorekit') == 'restorekit-silver-contact-sheet'
    r = silver(d, '--src', src, '--patch', 32, '--n-workers', 0, '--overwrite')
    assert r.returncode == 0, r.stderr
    assert SilverStore(d).patch == 32


def test_centroids_overwrite_never_deletes_the_silver_store(tmp_path):
    "Issue item 2: build_centroids(..., dest=the Silver store's own folder, overwrite=True) refuses; the store still opens."
    d = tmp_path / 'silver'
    build_silver(photos(tmp_path / 'photos'), d, patch=P, n_workers=0, verbose=False)
    store = SilverStore(d)
    before = hashes(tmp_path)
    teacher = create_model('edsr_baseline', 2, seed=7, n_feats=8, n_blocks=1)
    with pytest.raises(ValueError, match='meta.json') as e: build_centroids(teacher, store, store.path, 2, overwrite=True, verbose=False)
    assert len(str(e.value).splitlines()) == 1
    assert hashes(tmp_path) == before
    assert len(SilverStore(d)) == len(store)


def test_sheet_inside_src_is_not_ingested(tmp_path):
    "Issue item 7: a --sheet written inside --src is skipped on the next build, with the reason."
    src = tmp_path / 'photos'; photos(src)
    assert silver(tmp_path / 's1', '--src', src, '--patch', P, '--n-workers', 0, '--sheet', src / 'sheet.png').returncode == 0
    assert (src / 'sheet.png').is_file()
    rep = build_silver(src, tmp_path / 's2', patch=P, n_workers=0, verbose=False)
    assert rep['n_sources'] == 2 and len(SilverStore(tmp_path / 's2').sources()) == 2
    assert any(s['file'] == 'sheet.png' and 'contact sheet' in s['reason'] for s in rep['skipped']), rep['skipped']


def test_store_folder_inside_src_is_not_ingested(tmp_path):
    "Issue item 7: a restorekit store folder inside --src (its sheet, any image in it) is skipped, with the reason."
    src = tmp_path / 'photos'; photos(src)
    inner = src / 'inner'
    assert silver(inner, '--src', src, '--patch', P, '--n-workers', 0).returncode == 0
    Image.open(src / 'p0.png').save(inner / 'copy.png')   # an unmarked image inside the store folder
    imgs, other = list_sources(src)
    assert sorted(n for _, n in imgs) == ['p0.png', 'p1.png'] and other == []
    rep = build_silver(src, tmp_path / 'outer', patch=P, n_workers=0, verbose=False)
    assert rep['n_sources'] == 2
    assert any(s['file'].startswith('inner') and 'store' in s['reason'] for s in rep['skipped']), rep['skipped']
