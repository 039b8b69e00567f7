"""Tests of `restorekit.export`: ONNX export with dynamic sizes checked against PyTorch in ONNX Runtime, and the CLI."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

ort = pytest.importorskip('onnxruntime', reason='onnxruntime is not installed (pip install onnxruntime)')
onnx = pytest.importorskip('onnx', reason='onnx is not installed (pip install onnx)')

from restorekit.export import CHECK_SIZES, ONNXExportError, export_onnx, onnx_max_abs_diff  # noqa: E402
from restorekit.models import create_model, save_weights  # noqa: E402
from conftest import run_cli  # noqa: E402

EDSR_TINY = dict(n_feats=8, n_blocks=2)
SIZES = [(37, 53), (64, 64), (96, 80), (17, 120)]   # (h, w): odd, square, non-square, very flat


pytestmark = pytest.mark.usefixtures('one_thread')   # conftest.py


def ort_vs_torch(path, model, sizes) -> dict:
    "Max abs diff between ONNX Runtime running `path` and `model`, per size, checked independently of export_onnx."
    sess = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    g, out = torch.Generator().manual_seed(1), {}
    for i, (h, w) in enumerate(sizes):
        x = torch.rand(1 + i % 2, 3, h, w, generator=g)
        with torch.no_grad():
            ref = model.eval()(x).numpy()
        got = sess.run(['output'], {'input': x.numpy()})[0]
        assert got.shape == ref.shape
        out[f'{x.shape[0]}x{h}x{w}'] = float(np.abs(got - ref).max())
    return out


@pytest.mark.parametrize('arch,scale,kw', [('edsr_baseline', 1, EDSR_TINY), ('edsr_baseline', 2, EDSR_TINY),
                                           ('edsr_baseline', 4, EDSR_TINY),
                                           ('srvgg_compact', 4, dict(num_feat=8, num_conv=2))])
def test_numerics_dynamic_sizes(tmp_path, arch, scale, kw):
    model = create_model(arch, scale, seed=0, **kw)
    r = export_onnx(model, tmp_path/'m.onnx', metadata={'arch': arch})
    assert r['max_abs_diff'] <= 1e-4 and set(r['diffs']) == {f'{h}x{w}' for h, w in CHECK_SIZES}
    diffs = ort_vs_torch(tmp_path/'m.onnx', model, SIZES)
    print(f"{arch} x{scale}: export check {r['diffs']}; independent {diffs}")
    assert max(diffs.values()) <= 1e-4, diffs
    meta = {p.key: p.value for p in onnx.load(tmp_path/'m.onnx').metadata_props}
    assert meta['arch'] == arch and meta['scale'] == str(scale) and 'restorekit_version' in meta


def test_model_untouched_and_input_names(tmp_path):
    model = create_model('edsr_baseline', 2, seed=0, **EDSR_TINY).train().double()
    export_onnx(model, tmp_path/'m.onnx')
    assert model.training and next(model.parameters()).dtype == torch.float64   # a float32 eval copy was exported
    sess = ort.InferenceSession(str(tmp_path/'m.onnx'), providers=['CPUExecutionProvider'])
    assert [i.name for i in sess.get_inputs()] == ['input'] and [o.name for o in sess.get_outputs()] == ['output']
    assert sess.get_inputs()[0].shape == ['batch', 3, 'height', 'width']


def test_static_export(tmp_path):
    r = export_onnx(create_model('edsr_baseline', 2, seed=0, **EDSR_TINY), tmp_path/'s.onnx', dynamic=False, example_size=32)
    assert list(r['diffs']) == ['32x32']
    sess = ort.InferenceSession(str(tmp_path/'s.onnx'), providers=['CPUExecutionProvider'])
    assert sess.get_inputs()[0].shape == [1, 3, 32, 32]


def test_dynamo_exporter(tmp_path):
    pytest.importorskip('onnxscript', reason='onnxscript is not installed (needed by the dynamo exporter)')
    model = create_model('edsr_baseline', 2, seed=0, **EDSR_TINY)
    r = export_onnx(model, tmp_path/'d.onnx', opset=18, dynamo=True)
    assert r['exporter'] == 'dynamo' and r['opset'] == 18 and r['max_abs_diff'] <= 1e-4
    assert max(ort_vs_torch(tmp_path/'d.onnx', model, SIZES[:2]).values()) <= 1e-4


def test_errors_leave_nothing(tmp_path):
    model = create_model('edsr_baseline', 2, seed=0, **EDSR_TINY)
    with pytest.raises(IsADirectoryError, match='is a folder'): export_onnx(model, tmp_path)
    with pytest.raises(ValueError, match=r'must end in \.onnx'): export_onnx(model, tmp_path/'m.pt')
    with pytest.raises(ValueError, match='opset>=18'): export_onnx(model, tmp_path/'m.onnx', dynamo=True)
    with pytest.raises(ONNXExportError, match='differs from PyTorch'): export_onnx(model, tmp_path/'m.onnx', atol=1e-12)
    with pytest.raises(TypeError, match='nn.Module'): export_onnx(object(), tmp_path/'m.onnx')
    assert list(tmp_path.iterdir()) == []


def test_onnx_max_abs_diff_detects_mismatch(tmp_path):
    a, b = (create_model('edsr_baseline', 2, seed=s, **EDSR_TINY) for s in (0, 1))
    export_onnx(a, tmp_path/'a.onnx')
    assert max(onnx_max_abs_diff(tmp_path/'a.onnx', b).values()) > 1e-3   # other weights: the check would fail


# --- CLI ----------------------------------------------------------------------------------------------------------

def cli(*args):
    return subprocess.run([sys.executable, '-m', 'restorekit.export', *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    "A default-configured SRVGGNetCompact x4 weights file (plain, no header: --arch/--scale are needed)."
    torch.set_num_threads(1)
    p = tmp_path_factory.mktemp('w')/'srvgg_x4.safetensors'
    return save_weights(create_model('srvgg_compact', 4, seed=0, num_conv=4), p)


def test_cli_exports(weights, tmp_path):
    out = tmp_path/'sub'/'model.onnx'
    r = cli(weights, '--arch', 'srvgg_compact', '--scale', 4, '--model-kw', '{num_conv: 4}', '--onnx', out)
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout and 'max abs diff' in r.stdout
    sess = ort.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    y = sess.run(None, {'input': np.random.rand(1, 3, 23, 31).astype(np.float32)})[0]
    assert y.shape == (1, 3, 92, 124)
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert (meta['arch'], meta['scale'], meta['model_kw']) == ('srvgg_compact', '4', '{"num_conv": 4}')
    assert [p.name for p in out.parent.iterdir()] == ['model.onnx']


def test_cli_weights_header_no_check(tmp_path):
    m = create_model('edsr_baseline', 2, seed=0, **EDSR_TINY)
    w = save_weights(m, tmp_path/'e.safetensors', {'arch': 'edsr_baseline', 'scale': 2, 'model_kw': '{"n_feats": 8, "n_blocks": 2}'})
    r = cli(w, '--onnx', tmp_path/'e.onnx', '--no-check')
    assert r.returncode == 0, r.stderr
    assert '--no-check' in r.stdout and (tmp_path/'e.onnx').is_file()


@pytest.mark.parametrize('case,expect', [
    ('missing', 'does not exist'), ('dir', 'is a folder'), ('suffix', 'must end in .onnx'),
    ('arch', "unknown architecture 'edsr_typo'"), ('mismatch', 'does not match EDSR'), ('no_onnx', '--onnx')])
def test_cli_errors(weights, tmp_path, case, expect):
    args = {'missing': [tmp_path/'nope.safetensors', '--arch', 'edsr_baseline', '--scale', 2, '--onnx', tmp_path/'o.onnx'],
            'dir': [weights, '--arch', 'srvgg_compact', '--scale', 4, '--onnx', tmp_path],
            'suffix': [weights, '--arch', 'srvgg_compact', '--scale', 4, '--onnx', tmp_path/'o.pt'],
            'arch': [weights, '--arch', 'edsr_typo', '--scale', 4, '--onnx', tmp_path/'o.onnx'],
            'mismatch': [weights, '--arch', 'edsr_baseline', '--scale', 4, '--onnx', tmp_path/'o.onnx'],
            'no_onnx': [weights, '--arch', 'srvgg_compact', '--scale', 4]}[case]
    r = cli(*args)
    assert r.returncode != 0
    assert expect in r.stderr, r.stderr
    if case != 'no_onnx': assert 'restorekit-export: error:' in r.stderr and 'Traceback' not in r.stderr
    assert list(tmp_path.iterdir()) == []   # nothing written, no temp file left


@pytest.mark.parametrize('bad', ['nan', 'inf'])
@pytest.mark.parametrize('check', [False, True])
def test_cli_refuses_non_finite_weights(tmp_path, capsys, bad, check):
    "NaN/Inf weights are refused whatever --check says: one line naming the file and the first bad tensor, nothing written."
    from restorekit.export import export_cli
    m = create_model('edsr_baseline', 2, seed=0, **EDSR_TINY)
    with torch.no_grad():
        m.body[1].body[0].bias[3] = float(bad)          # 'body.1.body.0.bias', the first bad tensor
        m.tail[1].weight[0, 0, 0, 0] = float('nan')     # a later one
    w = save_weights(m, tmp_path/'bad.safetensors', {'arch': 'edsr_baseline', 'scale': 2, 'model_kw': '{"n_feats": 8, "n_blocks": 2}'})
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    rc = run_cli(export_cli, 'restorekit-export', [w, '--onnx', tmp_path/'m.onnx'] + ([] if check else ['--no-check']))
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1, (rc, err)
    assert err.startswith('restorekit-export: error:') and str(w) in err and "'body.1.body.0.bias'" in err and 'tail.1' not in err, err
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before     # no .onnx, no temporary file


def test_export_onnx_refuses_non_finite_weights(tmp_path):
    m = create_model('edsr_baseline', 2, seed=0, **EDSR_TINY)
    with torch.no_grad(): m.head[0].weight[0, 0, 0, 0] = float('inf')
    with pytest.raises(ValueError, match="'head.0.weight'"): export_onnx(m, tmp_path/'m.onnx', check=False)
    assert list(tmp_path.iterdir()) == []
