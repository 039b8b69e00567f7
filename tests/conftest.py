"""Shared fixtures: a bad-input image corpus and photo-like test images, all generated in `tmp_path`."""
from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

_ASTRONAUT = None


def _astronaut() -> np.ndarray:
    global _ASTRONAUT
    if _ASTRONAUT is None:
        import skimage.data
        _ASTRONAUT = np.ascontiguousarray(skimage.data.astronaut())  # (512, 512, 3) uint8
    return _ASTRONAUT


def make_photo(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    "A photo-like `(h, w, 3)` uint8 RGB array: a seeded crop of skimage's astronaut, resized (distinct per seed)."
    src = _astronaut()
    rng = np.random.default_rng(seed)
    side = int(rng.integers(200, 400))
    y, x = (int(v) for v in rng.integers(0, 512 - side, 2))
    crop = Image.fromarray(src[y:y + side, x:x + side])
    return np.asarray(crop.resize((w, h), Image.BICUBIC)).copy()


def write_photos(folder: Path, n: int, h: int = 96, w: int = 128, prefix: str = 'photo', exts=('.png',),
                 seed0: int = 0) -> list[Path]:
    "Write `n` distinct photo-like images into `folder`, cycling through `exts`."
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f'{prefix}_{i:02d}{exts[i % len(exts)]}'
        arr = make_photo(h, w, seed=seed0 + i)
        if p.suffix in ('.jpg', '.jpeg'): Image.fromarray(arr).save(p, quality=95)
        else: Image.fromarray(arr).save(p)
        out.append(p)
    return out


def _bomb_png() -> bytes:
    "A valid PNG whose IHDR claims 100000x100000 pixels (with a correct CRC) but whose IDAT is tiny."
    buf = io.BytesIO()
    Image.new('RGB', (1, 1), (10, 20, 30)).save(buf, 'PNG')
    b = bytearray(buf.getvalue())
    assert b[12:16] == b'IHDR'
    b[16:24] = struct.pack('>II', 100_000, 100_000)
    b[29:33] = struct.pack('>I', zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)  # CRC over type + data
    return bytes(b)


@dataclass
class Corpus:
    root: Path
    # expected outcome in build_silver (patch=64): name -> substring of the skip reason
    skipped: dict = field(default_factory=dict)
    used: set = field(default_factory=set)
    ignored: set = field(default_factory=set)
    # pixel data some files were written from
    rgb16: np.ndarray | None = None     # (H, W, 3) uint16, RGB order
    gray16: np.ndarray | None = None    # (H, W) uint16
    photo: np.ndarray | None = None     # (H, W, 3) uint8 source of most 8-bit files

    def __getitem__(self, name) -> Path: return self.root / name


H, W = 80, 96  # size of the 'usable' corpus files (>= 64 so patch=64 fits)


def make_corpus(root: Path) -> Corpus:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    c = Corpus(root)
    photo = make_photo(H, W, seed=123)
    c.photo = photo

    # truncated PNG / JPEG: a valid file cut to half its bytes
    buf = io.BytesIO(); Image.fromarray(photo).save(buf, 'PNG'); b = buf.getvalue()
    (root / 'truncated.png').write_bytes(b[:len(b) // 2])
    buf = io.BytesIO(); Image.fromarray(photo).save(buf, 'JPEG', quality=90); b = buf.getvalue()
    (root / 'truncated.jpg').write_bytes(b[:len(b) // 2])
    c.skipped['truncated.png'] = 'corrupt or truncated'
    c.skipped['truncated.jpg'] = 'corrupt or truncated'

    (root / 'empty.png').write_bytes(b'')
    c.skipped['empty.png'] = 'empty'
    (root / 'notes.png').write_text('these are my notes, not a picture\n')
    c.skipped['notes.png'] = 'not a recognised image format'
    Image.new('RGB', (1, 1), (200, 100, 50)).save(root / 'tiny_1x1.png')
    c.skipped['tiny_1x1.png'] = 'too small'

    # 16-bit RGB (cv2 wants BGR) and 16-bit gray: smooth gradients plus noise, using the full 16-bit range
    rng = np.random.default_rng(16)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    base = np.stack([xx / (W - 1), yy / (H - 1), (xx + yy) / (H + W - 2)], axis=2) * 60000
    c.rgb16 = np.clip(base + rng.integers(0, 5536, (H, W, 3)), 0, 65535).astype(np.uint16)
    assert cv2.imwrite(str(root / 'rgb16.png'), c.rgb16[..., ::-1].copy())
    c.gray16 = np.clip(base[..., 0] * 0.5 + base[..., 1] * 0.5 + rng.integers(0, 5536, (H, W)), 0, 65535).astype(np.uint16)
    assert cv2.imwrite(str(root / 'gray16.png'), c.gray16)
    c.used |= {'rgb16.png', 'gray16.png'}

    rgba = np.dstack([photo, np.full((H, W), 255, np.uint8)])
    rgba_t = rgba.copy(); rgba_t[: H // 2, :, 3] = 0; rgba_t[H // 2:, :, 3] = 128
    Image.fromarray(rgba_t, 'RGBA').save(root / 'rgba_transparent.png')
    c.skipped['rgba_transparent.png'] = 'transparent'
    Image.fromarray(rgba, 'RGBA').save(root / 'rgba_opaque.png')
    c.used.add('rgba_opaque.png')

    Image.fromarray(photo).convert('P', palette=Image.Palette.ADAPTIVE, colors=64).save(root / 'palette.png')
    c.used.add('palette.png')
    Image.fromarray(photo).convert('CMYK').save(root / 'cmyk.jpg', 'JPEG', quality=95)
    c.used.add('cmyk.jpg')

    im = Image.fromarray(photo)
    exif = im.getexif(); exif[0x0112] = 6
    im.save(root / 'exif_rot6.jpg', exif=exif, quality=95)
    c.used.add('exif_rot6.jpg')

    (root / 'bomb_header.png').write_bytes(_bomb_png())
    c.skipped['bomb_header.png'] = 'max_pixels'

    Image.fromarray(photo).convert('1').save(root / 'bilevel.png')
    c.skipped['bilevel.png'] = 'unsupported pixel mode'

    (root / 'readme.txt').write_text('not an image, should be ignored\n')
    c.ignored.add('readme.txt')
    return c


@pytest.fixture
def bad_corpus(tmp_path) -> Corpus:
    "The bad-input corpus, generated fresh in `tmp_path/corpus`."
    return make_corpus(tmp_path / 'corpus')


@pytest.fixture
def corpus_with_photos(bad_corpus) -> Corpus:
    "The bad corpus plus three valid photos (PNG, JPEG, PNG) of at least the patch size (64)."
    ps = write_photos(bad_corpus.root, 3, h=100, w=136, exts=('.png', '.jpg'))
    bad_corpus.used |= {p.name for p in ps}
    return bad_corpus


@pytest.fixture
def photo_maker():
    "The `make_photo(h, w, seed)` helper."
    return make_photo


@pytest.fixture
def photos_writer():
    "The `write_photos(folder, n, h, w, prefix, exts, seed0)` helper."
    return write_photos


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch):
    "An empty torch hub cache (`TORCH_HOME=tmp_path/'torch'`), no RESTOREKIT_TRUNK_DIR, and downloads failing as they do offline."
    import urllib.error

    import torch
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.delenv('RESTOREKIT_TRUNK_DIR', raising=False)
    monkeypatch.delenv('RESTOREKIT_OFFLINE', raising=False)
    def no_network(*a, **k): raise urllib.error.URLError('[Errno -2] Name or service not known')
    monkeypatch.setattr(torch.hub, 'urlopen', no_network)
    return tmp_path


@pytest.fixture(scope='module')
def one_thread():
    "One torch thread for a test module (its models are tiny: thread start-up costs more than it gains), restored after."
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def store(tmp_path_factory):
    "A tiny Silver store (48 px patches, at most 6 per image) cut from the first eight bundled photos."
    from restorekit.core import sample_images
    from restorekit.silver import SilverStore, build_silver
    dest = tmp_path_factory.mktemp('silver')
    build_silver(sample_images()[:8], dest, patch=48, max_per_image=6, verbose=False)
    return SilverStore(dest)


@pytest.fixture(scope='module')
def valid_imgs() -> list[Path]:
    "Two bundled photos held out of `store`, for validation."
    from restorekit.core import sample_images
    return sample_images()[8:10]


def patience(seconds: float) -> float:
    """The limit of a hang guard: `seconds` (a wide margin over what the wait takes on 2 quiet cores), stretched by the
    machine's load (the 1-minute load average per core, when above 1) and by `$RESTOREKIT_TEST_PATIENCE` (default 1).
    Such limits only stop a test that would otherwise hang the suite (a deadlocked process, a lost child); none of
    them measures speed, so a slow, busy machine must never reach one."""
    try: load = os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError: load = 1.0
    return seconds * max(1.0, load) * float(os.environ.get('RESTOREKIT_TEST_PATIENCE', '1'))


def run_cli(cli, prog: str, argv: list) -> int:
    "Run a `call_parse` console entry point in this process with `argv`, as its console script would; return the exit status."
    from unittest import mock
    with mock.patch.object(sys, 'argv', [prog, *map(str, argv)]):
        script = str(Path(sys.prefix) / 'bin' / prog)   # the top level of the console script, which `call_parse` detects
        try: exec(compile('sys.exit(cli())', script, 'exec'), {'__name__': '__main__', '__file__': script, 'sys': sys, 'cli': cli})
        except SystemExit as e:
            if isinstance(e.code, str): print(e.code, file=sys.stderr)   # what the interpreter does with sys.exit('message')
            return e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    return 0
