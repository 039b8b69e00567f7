"""The README's Python example reproduces: its code blocks run in order, twice (each time after seeding the global RNGs
differently, so a number that depends on ambient random state fails), and every value they print matches the output
README.md shows (the LPIPS term of `RestorationLoss(..., trunk='random')` included)."""
from __future__ import annotations

import ast
import random
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

README = Path(__file__).resolve().parent.parent/'README.md'
_NUM = re.compile(r'[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?')


def readme_examples(text: str) -> list[tuple[str, str | None]]:
    "The README's ```python blocks in order, each with the output shown below it (an indented block) or None."
    out = []
    for m in re.finditer(r'^```python\n(.*?)^```\n', text, re.S | re.M):
        shown = re.match(r'\n*((?:(?: {4}.*)?\n)+)', text[m.end():])
        lines = shown.group(1).rstrip('\n').splitlines() if shown and shown.group(1).strip() else None
        out.append((m.group(1), '\n'.join(l[4:] for l in lines) if lines else None))
    return out


def run_examples(examples, seed: int) -> list[str | None]:
    "Run the blocks in one fresh namespace after seeding every global RNG with `seed`; the repr of each block's last expression."
    random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)
    ns, got = {'__name__': '__readme__'}, []
    for code, _ in examples:
        tree = ast.parse(code)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, 'README.md', 'exec'), ns)
        got.append(repr(eval(compile(ast.Expression(last.value), 'README.md', 'eval'), ns)) if last else None)
    return got


def _tol(num: str) -> float:
    "How far a recomputed value may be from the printed `num`: 1.5 units of its last printed digit (so 4-decimal values must agree to the 4th), at most 1e-3, at least 1e-6 relative."
    decimals = len(num.split('.')[1].split('e')[0].split('E')[0]) if '.' in num else 0
    return max(min(1e-3, 1.5 * 10.0**-decimals), 1e-6 * abs(float(num)))


def same_output(shown: str, got: str) -> str | None:
    "None when `got` matches `shown` (text exactly, whitespace aside; numbers within `_tol`), else what differs."
    a, b = re.sub(r'\s+', '', shown), re.sub(r'\s+', '', got)
    if _NUM.split(a) != _NUM.split(b): return f"text differs: {shown!r} vs {got!r}"
    for x, y in zip(_NUM.findall(a), _NUM.findall(b)):
        if abs(float(x) - float(y)) > _tol(x): return f"{y} differs from the README's {x} by more than {_tol(x):g}"
    return None


def test_parser_and_comparison():
    md = "x\n\n```python\na = 1\n```\n\n```python\na + 1\n```\n\n    2\n\n## next\n"
    assert readme_examples(md) == [('a = 1\n', None), ('a + 1\n', '2')]
    assert same_output("(1.2345,\n {'lpips': 0.0343})", "(1.23449, {'lpips': 0.0343})") is None
    assert same_output("{'lpips': 0.0343}", "{'lpips': 0.0335}") is not None     # 4 decimals must agree
    assert same_output("{'lpips': 0.0343}", "{'lpip': 0.0343}") is not None
    assert same_output("21.708392788694617", "21.70839") is None


@pytest.mark.filterwarnings('ignore::UserWarning')
def test_readme_example_reproduces(tmp_path, monkeypatch):
    examples = readme_examples(README.read_text())
    shown = [s for _, s in examples]
    assert sum(s is not None for s in shown) >= 3, "README.md lost its example outputs"
    assert any(s and "'lpips'" in s for s in shown), "README.md no longer shows the LPIPS term"
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))   # the example's mkdtemp() lands in tmp_path
    with torch.random.fork_rng(devices=[]):
        runs = [run_examples(examples, seed) for seed in (1, 1234)]
    for got in runs:
        for (code, s), g in zip(examples, got):
            if s is None: continue
            assert g is not None, f"README shows an output for a block without a final expression:\n{code}"
            assert same_output(s, g) is None, f"README example output does not reproduce:\n{code}\n{same_output(s, g)}"
