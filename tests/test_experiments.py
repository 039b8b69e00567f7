"""Smoke versions of the experiments in `experiments/` (CI runs these; the committed results come from full runs)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from restorekit.core import shared_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shared_data() is None or not (shared_data() / 'weights_IMDN' / 'IMDN_x2.pth').is_file(),
                    reason='needs ../shared/data (IMDN x2 weights and Set5)')
def test_finetune_defaults_smoke():
    r = subprocess.run([sys.executable, str(ROOT / 'experiments' / 'finetune_defaults.py'), '--smoke'],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [l for l in r.stdout.splitlines() if ' seed 0: ' in l]
    assert len(lines) == 4, r.stdout
    before = {float(l.split(': ')[1].split(' -> ')[0]) for l in lines if l.startswith('bicubic')}
    assert len(before) == 1 and abs(before.pop() - 38.00) < 0.05    # IMDN x2 on Set5: the published 38.00 dB
