"""`restorekit.core.load_image` / `save_image` on every file of the bad-input corpus."""
from __future__ import annotations

import os
import time
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from restorekit.core import DEFAULT_MAX_PIXELS, ImageReadError, load_image, save_image

# corpus file -> substring expected in ImageReadError.reason
BAD = {
    'truncated.png': 'corrupt or truncated',
    'truncated.jpg': 'corrupt or truncated',
    'empty.png': 'empty',
    'notes.png': 'not a recognised image format',
    'bomb_header.png': 'max_pixels',
    'bilevel.png': 'unsupported pixel mode',
}


def _hwc(t: torch.Tensor) -> np.ndarray: return t.permute(1, 2, 0).numpy()


@pytest.mark.parametrize('name', sorted(BAD))
@pytest.mark.parametrize('mode', ['RGB', 'RGBA', 'L'])
def test_bad_file_raises_image_read_error(bad_corpus, name, mode):
    p = bad_corpus[name]
    with pytest.raises(ImageReadError) as ei:
        load_image(p, mode=mode)
    e = ei.value
    assert isinstance(e, OSError)               # documented: ImageReadError is an OSError
    assert name in str(e)                       # message names the file
    assert str(p) in str(e)
    assert e.path == p
    assert BAD[name] in e.reason, e.reason      # informative reason
    assert e.reason in str(e)


def test_missing_file_raises_image_read_error(tmp_path):
    p = tmp_path / 'nope.png'
    with pytest.raises(ImageReadError, match='nope.png') as ei:
        load_image(p)
    assert 'FileNotFoundError' in ei.value.reason


def test_directory_raises_image_read_error(tmp_path):
    d = tmp_path / 'folder.png'; d.mkdir()
    with pytest.raises(ImageReadError, match='folder.png'):
        load_image(d)


def test_truncated_16bit_png_raises(bad_corpus, tmp_path):
    b = bad_corpus['rgb16.png'].read_bytes()
    p = tmp_path / 'trunc16.png'; p.write_bytes(b[:len(b) // 2])
    with pytest.raises(ImageReadError, match='trunc16.png') as ei:
        load_image(p)
    assert 'corrupt or truncated' in ei.value.reason


def test_bomb_header_is_refused_fast_without_big_allocation(bad_corpus):
    p = bad_corpus['bomb_header.png']
    assert p.stat().st_size < 200
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        with pytest.raises(ImageReadError) as ei:
            load_image(p)
        secs = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert secs < 1.0
    assert peak < 5 * 2**20                     # nothing like 100000*100000*3 bytes was allocated
    r = ei.value.reason
    assert 'max_pixels' in r and '100000x100000' in r and f'{DEFAULT_MAX_PIXELS:,}' in r


def test_max_pixels_is_per_call(bad_corpus):
    p = bad_corpus['rgba_opaque.png']
    with pytest.raises(ImageReadError, match='max_pixels=100'):
        load_image(p, max_pixels=100)
    assert load_image(p, max_pixels=None).shape == (3, 80, 96)
    assert load_image(p, max_pixels=80 * 96).shape == (3, 80, 96)      # the limit is inclusive


def test_one_pixel_png_loads(bad_corpus):
    t = load_image(bad_corpus['tiny_1x1.png'])
    assert t.shape == (3, 1, 1) and t.dtype == torch.float32
    np.testing.assert_allclose(t.flatten().numpy(), np.array([200, 100, 50]) / 255, atol=1e-6)


def test_16bit_rgb_keeps_precision(bad_corpus):
    t, info = load_image(bad_corpus['rgb16.png'], with_info=True)
    assert info['bits'] == 16 and info['format'] == 'PNG' and info['size'] == (96, 80)
    assert t.shape == (3, 80, 96) and t.dtype == torch.float32
    np.testing.assert_allclose(_hwc(t), bad_corpus.rgb16 / 65535., atol=1e-6, rtol=0)
    # precision really is finer than 8 bits: many distinct values per 8-bit bin
    assert len(np.unique(t[0].numpy())) > 1000


def test_16bit_rgb_rgba_mode_is_opaque(bad_corpus):
    t = load_image(bad_corpus['rgb16.png'], mode='RGBA')
    assert t.shape == (4, 80, 96)
    assert torch.all(t[3] == 1)
    np.testing.assert_allclose(_hwc(t[:3]), bad_corpus.rgb16 / 65535., atol=1e-6, rtol=0)


def test_16bit_gray_keeps_precision(bad_corpus):
    t, info = load_image(bad_corpus['gray16.png'], with_info=True)
    assert info['bits'] == 16
    assert t.shape == (3, 80, 96)
    for ch in t: np.testing.assert_allclose(ch.numpy(), bad_corpus.gray16 / 65535., atol=1e-6, rtol=0)
    g = load_image(bad_corpus['gray16.png'], mode='L')
    assert g.shape == (1, 80, 96)
    np.testing.assert_allclose(g[0].numpy(), bad_corpus.gray16 / 65535., atol=1e-6, rtol=0)


def test_8bit_files_report_8_bits(bad_corpus):
    for n in ('rgba_opaque.png', 'palette.png', 'cmyk.jpg', 'exif_rot6.jpg', 'tiny_1x1.png'):
        _, info = load_image(bad_corpus[n], with_info=True)
        assert info['bits'] == 8, n


def test_cmyk_jpeg_loads_as_rgb(bad_corpus):
    t, info = load_image(bad_corpus['cmyk.jpg'], with_info=True)
    assert info['mode'] == 'CMYK' and info['format'] == 'JPEG'
    assert t.shape == (3, 80, 96)
    assert float(t.min()) >= 0 and float(t.max()) <= 1
    # CMYK<->RGB in Pillow is the naive complement: colours survive up to JPEG loss
    assert np.abs(_hwc(t) - bad_corpus.photo / 255.).mean() < 0.03
    assert load_image(bad_corpus['cmyk.jpg'], mode='RGBA').shape == (4, 80, 96)


def test_palette_png_loads_as_rgb(bad_corpus):
    p = bad_corpus['palette.png']
    t, info = load_image(p, with_info=True)
    assert info['mode'] == 'P'
    assert t.shape == (3, 80, 96)
    expected = np.asarray(Image.open(p).convert('RGB'), dtype=np.float32) / 255
    np.testing.assert_allclose(_hwc(t), expected, atol=1e-6)
    rgba = load_image(p, mode='RGBA')
    assert torch.all(rgba[3] == 1)


def test_palette_png_with_transparency(tmp_path, photo_maker):
    p = tmp_path / 'ptrans.png'
    im = Image.fromarray(photo_maker(16, 16)).convert('P', palette=Image.Palette.ADAPTIVE, colors=16)
    im.save(p, transparency=0)
    with pytest.warns(UserWarning, match='transparent'):
        assert load_image(p).shape == (3, 16, 16)
    a = load_image(p, mode='RGBA')
    assert float(a[3].min()) == 0.0


def test_rgba_with_transparency_warns_when_alpha_dropped(bad_corpus):
    p = bad_corpus['rgba_transparent.png']
    with pytest.warns(UserWarning, match="rgba_transparent.png.*transparent.*mode='RGBA'"):
        t = load_image(p)
    assert t.shape == (3, 80, 96)
    np.testing.assert_allclose(_hwc(t), bad_corpus.photo / 255., atol=1e-6)
    with pytest.warns(UserWarning, match='transparent'):
        assert load_image(p, mode='L').shape == (1, 80, 96)


def test_rgba_mode_keeps_alpha_without_warning(bad_corpus):
    p = bad_corpus['rgba_transparent.png']
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        t = load_image(p, mode='RGBA')
    assert t.shape == (4, 80, 96)
    np.testing.assert_allclose(t[3, :40].numpy(), 0.0, atol=1e-7)
    np.testing.assert_allclose(t[3, 40:].numpy(), 128 / 255, atol=1e-6)
    np.testing.assert_allclose(_hwc(t[:3]), bad_corpus.photo / 255., atol=1e-6)


def test_opaque_rgba_loads_silently(bad_corpus):
    p = bad_corpus['rgba_opaque.png']
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        t = load_image(p)
        a = load_image(p, mode='RGBA')
    assert t.shape == (3, 80, 96) and a.shape == (4, 80, 96)
    assert torch.all(a[3] == 1)
    np.testing.assert_allclose(_hwc(t), bad_corpus.photo / 255., atol=1e-6)


def test_exif_rotated_jpeg_is_transposed(bad_corpus):
    p = bad_corpus['exif_rot6.jpg']
    t, info = load_image(p, with_info=True)
    assert info['size'] == (96, 80)           # the stored (w, h)
    assert t.shape == (3, 96, 80)             # H and W swapped: orientation applied
    stored = np.asarray(Image.open(p).convert('RGB'), dtype=np.float32) / 255   # raw, un-rotated pixels
    assert stored.shape == (80, 96, 3)
    got = _hwc(t)
    # orientation 6 = rotate 90 degrees clockwise for display
    np.testing.assert_allclose(got, np.rot90(stored, -1), atol=1e-6)
    err_right = np.abs(got - np.rot90(bad_corpus.photo / 255., -1)).mean()
    err_wrong = np.abs(got - np.rot90(bad_corpus.photo / 255., 1)).mean()
    assert err_right < 0.03 < err_wrong


def test_invalid_mode_is_value_error(bad_corpus):
    with pytest.raises(ValueError, match='mode must be one of'):
        load_image(bad_corpus['rgba_opaque.png'], mode='CMYK')


def test_32bit_int_tiff_is_refused_or_in_range(tmp_path):
    p = tmp_path / 'int32.tif'
    Image.fromarray((np.arange(20 * 30).reshape(20, 30) * 1000).astype(np.int32), 'I').save(p)
    with pytest.raises(ImageReadError, match="unsupported pixel mode 'I'"):
        load_image(p)


# ---------------------------------------------------------------- save_image

@pytest.mark.parametrize('ext,bits,atol', [('.png', 8, 0.5 / 255), ('.png', 16, 0.5 / 65535),
                                           ('.tif', 16, 0.5 / 65535), ('.tiff', 8, 0.5 / 255),
                                           ('.bmp', 8, 0.5 / 255)])
@pytest.mark.parametrize('c', [1, 3, 4])
def test_save_load_round_trip_lossless(tmp_path, ext, bits, atol, c):
    g = torch.Generator().manual_seed(c * 10 + bits)
    x = torch.rand(c, 17, 23, generator=g)
    if c == 4: x[3] = 1.0   # opaque, so load_image does not warn
    p = save_image(x, tmp_path / f'out{bits}{ext}', bits=bits)
    assert p == tmp_path / f'out{bits}{ext}' and p.exists()
    mode = {1: 'L', 3: 'RGB', 4: 'RGBA'}[c]
    y, info = load_image(p, mode=mode, with_info=True)
    assert info['bits'] == bits
    assert y.shape == x.shape
    assert (y - x).abs().max().item() <= atol + 1e-7
    assert [f.name for f in tmp_path.iterdir()] == [p.name]   # no temp file left


def test_save_jpeg_round_trip_is_close(tmp_path, photo_maker):
    x = torch.from_numpy(photo_maker(64, 80)).permute(2, 0, 1)   # uint8 input is accepted
    p = save_image(x, tmp_path / 'a.jpg', quality=95)
    y = load_image(p)
    assert y.shape == (3, 64, 80)
    assert (y - x.float() / 255).abs().mean().item() < 0.02


def test_save_rgba_with_transparency_round_trips_alpha(tmp_path):
    x = torch.rand(4, 9, 11, generator=torch.Generator().manual_seed(0))
    p = save_image(x, tmp_path / 'a.png')
    y = load_image(p, mode='RGBA')
    assert (y - x).abs().max().item() <= 0.5 / 255 + 1e-7


def test_save_image_validation(tmp_path):
    x = torch.rand(3, 4, 4)
    with pytest.raises(ValueError, match='16-bit'): save_image(x, tmp_path / 'o.jpg', bits=16)
    with pytest.raises(ValueError, match='bits must be'): save_image(x, tmp_path / 'o.png', bits=12)
    with pytest.raises(ValueError, match=r'\(C,H,W\)'): save_image(x[None], tmp_path / 'o.png')
    with pytest.raises(ValueError, match='NaN'): save_image(torch.full((3, 4, 4), float('nan')), tmp_path / 'o.png')
    with pytest.raises(TypeError): save_image(x.numpy(), tmp_path / 'o.png')
    with pytest.raises(TypeError): save_image((x * 100).int(), tmp_path / 'o.png')
    with pytest.raises(ValueError): save_image(x, tmp_path / 'o.unknownext')
    assert list(tmp_path.iterdir()) == []


def test_save_image_clamps(tmp_path):
    x = torch.tensor([-1.0, 0.5, 2.0]).reshape(1, 1, 3).expand(3, 1, 3).contiguous()
    y = load_image(save_image(x, tmp_path / 'c.png', bits=16))
    np.testing.assert_allclose(y[0, 0].numpy(), [0, 0.5, 1], atol=1e-4)


def test_save_image_is_atomic_when_rename_fails(tmp_path, monkeypatch):
    dest = tmp_path / 'keep.png'
    orig = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))
    save_image(orig, dest)
    before = dest.read_bytes()
    mtime = dest.stat().st_mtime_ns

    def boom(*a, **k): raise OSError(28, 'No space left on device (simulated)')
    monkeypatch.setattr(os, 'replace', boom)
    with pytest.raises(OSError, match='simulated'):
        save_image(torch.zeros(3, 8, 8), dest)
    with pytest.raises(OSError, match='simulated'):
        save_image(torch.zeros(3, 8, 8), tmp_path / 'new.png')   # a new destination
    monkeypatch.undo()

    assert dest.read_bytes() == before and dest.stat().st_mtime_ns == mtime
    assert sorted(f.name for f in tmp_path.iterdir()) == ['keep.png']   # no temp file, no partial new.png
    assert (load_image(dest) - orig).abs().max().item() <= 0.5 / 255 + 1e-7


def test_save_image_is_atomic_when_write_is_interrupted(tmp_path, monkeypatch):
    "A failure (e.g. KeyboardInterrupt) during fsync must not leave a temp file or touch the destination."
    dest = tmp_path / 'keep.png'
    save_image(torch.rand(3, 8, 8), dest)
    before = dest.read_bytes()

    def interrupted(fd): raise KeyboardInterrupt
    monkeypatch.setattr(os, 'fsync', interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_image(torch.zeros(3, 8, 8), dest)
    monkeypatch.undo()
    assert dest.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ['keep.png']


def test_save_image_creates_parent_folders(tmp_path):
    p = save_image(torch.rand(3, 5, 6), tmp_path / 'a' / 'b' / 'c.png')
    assert p.exists() and load_image(p).shape == (3, 5, 6)
