#!/usr/bin/env python
"""Build restorekit's docs, offline when need be, and regenerate README.md from nbs/index.ipynb.

With Quarto on PATH this runs nbdev's own `nbdev-docs` (the full website, in docs/). Without it (CI, and any
machine without internet to fetch Quarto) it runs nbdev's notebook processing (`proc_nbs`, which executes every
`show_doc` exactly as `nbdev-docs` would) and renders the processed notebooks to static HTML with nbconvert:
open docs/index.html in a browser.

Usage: python scripts/docs.py [--readme-only]
"""
import json, re, shutil, subprocess, sys
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter, MarkdownExporter
from nbdev.config import get_config
from nbdev.quarto import refresh_quarto_yml
from nbdev.serve import proc_nbs

ROOT = Path(__file__).resolve().parent.parent
_DIRECTIVE = re.compile(r'^\s*#\s*\|')


def _hidden(cell) -> bool:
    return cell.cell_type == 'code' and any(re.match(r'^\s*#\s*\|\s*(hide|default_exp)\b', l) for l in cell.source.splitlines())


def write_readme(cfg) -> Path:
    "README.md from the readme notebook: markdown as is, visible code cells and their text outputs, directives stripped."
    nb = nbformat.read(cfg.nbs_path/cfg.readme_nb, as_version=4)
    nb.cells = [c for c in nb.cells if not _hidden(c)]
    nb.metadata['language_info'] = {'name': 'python'}
    for c in nb.cells:
        if c.cell_type == 'code':
            c.source = '\n'.join(l for l in c.source.splitlines() if not _DIRECTIVE.match(l))
            c.outputs = [o for o in c.get('outputs', []) if o.get('output_type') != 'display_data']
    body, _ = MarkdownExporter().from_notebook_node(nb)
    body = re.sub(r'\n{3,}', '\n\n', body).strip() + '\n'
    note = f"<!-- generated from {cfg.nbs_path.name}/{cfg.readme_nb} by scripts/docs.py: edit the notebook, not this file -->\n\n"
    out = ROOT/'README.md'
    out.write_text(note + body)
    return out


_CELL_KEYS = {'code': {'cell_type', 'id', 'metadata', 'source', 'outputs', 'execution_count'},
              'markdown': {'cell_type', 'id', 'metadata', 'source', 'attachments'},
              'raw': {'cell_type', 'id', 'metadata', 'source', 'attachments'}}


def _read_processed(p: Path):
    "Read a notebook processed by nbdev (its cells carry extra bookkeeping keys nbformat rejects)."
    d = json.loads(p.read_text())
    d['cells'] = [{k: v for k, v in c.items() if k in _CELL_KEYS[c['cell_type']]} for c in d['cells']]
    for c in d['cells']: c['metadata'].pop('execution', None)
    return nbformat.reads(json.dumps(d), as_version=4)


def _html_name(nb: Path) -> str:
    return re.sub(r'^\d+[a-zA-Z0-9]*_', '', nb.stem.lower()) + '.html'


def static_site(cfg) -> Path:
    "Processed notebooks -> docs/*.html with a navigation bar."
    cache = proc_nbs(str(cfg.nbs_path), n_workers=0)
    nbs = sorted(cache.glob('*.ipynb'), key=lambda p: (p.name != cfg.readme_nb, p.name))
    out = cfg.doc_path
    shutil.rmtree(out, ignore_errors=True); out.mkdir(parents=True)
    titles = {}
    for p in nbs:
        nb = _read_processed(p)
        m = re.search(r'^title:\s*"?(.*?)"?\s*$', nb.cells[0].source, re.M) if nb.cells else None
        titles[p] = m.group(1) if m else p.stem
    nav = ' | '.join(f'<a href="{_html_name(p) if p.name != cfg.readme_nb else "index.html"}">{titles[p]}</a>' for p in nbs)
    nav = f'<nav style="padding:.6em 1em;border-bottom:1px solid #ddd;font-family:sans-serif">{nav}</nav>'
    from traitlets.config import Config
    c = Config(); c.TagRemovePreprocessor.enabled = True; c.TagRemovePreprocessor.remove_input_tags = {'remove_input'}
    exp = HTMLExporter(template_name='lab', config=c)
    for p in nbs:
        nb = _read_processed(p)
        for c in nb.cells:  # front matter (raw YAML) -> visible title
            if c.cell_type == 'raw' and c.source.startswith('---'):
                c.cell_type, c.source = 'markdown', f'# {titles[p]}'
                c.pop('outputs', None); c.pop('execution_count', None)
            if c.cell_type != 'code': continue
            if re.search(r'^\s*#\s*\|\s*echo:\s*false', c.source, re.M): c.metadata['tags'] = ['remove_input']
            c.source = '\n'.join(l for l in c.source.splitlines() if not _DIRECTIVE.match(l))
            for o in c.get('outputs', []):  # Quarto-only link attributes in show_doc output
                md = o.get('data', {}).get('text/markdown')
                if md: o['data']['text/markdown'] = re.sub(r'\{target="_blank"[^}]*\}', '', md if isinstance(md, str) else ''.join(md))
        html, _ = exp.from_notebook_node(nb, resources={'metadata': {'name': titles[p]}})
        html = re.sub(r'(<body[^>]*>)', r'\1' + nav.replace('\\', r'\\'), html, count=1)
        name = 'index.html' if p.name == cfg.readme_nb else _html_name(p)
        (out/name).write_text(html)
    return out


def main(argv):
    cfg = get_config(ROOT)
    readme = write_readme(cfg)
    if '--readme-only' in argv: return print(f"wrote {readme}")
    refresh_quarto_yml()
    if shutil.which('quarto'):
        subprocess.run(['nbdev-docs'], cwd=ROOT, check=True)
        print(f"docs (Quarto) in {cfg.doc_path}")
    else:
        out = static_site(cfg)
        print(f"Quarto not found: static docs from processed notebooks in {out} (open {out/'index.html'})")


if __name__ == '__main__':
    main(sys.argv[1:])
