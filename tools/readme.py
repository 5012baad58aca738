"""README.md from nbs/index.ipynb (nbdev-readme needs quarto): markdown cells as they are, code cells as python blocks
with their text outputs; `#| hide` cells and directive lines left out, images left out. `--check` fails if README.md differs."""
import json, re, sys
from pathlib import Path

def cell_src(c): return ''.join(c['source'])

def to_md(nb):
    out = []
    for c in nb['cells']:
        src = cell_src(c)
        if c['cell_type'] == 'markdown': out.append(src.strip()); continue
        lines = src.split('\n')
        if any(re.match(r'#\|\s*hide', l) for l in lines): continue
        code = '\n'.join(l for l in lines if not l.startswith('#|')).strip()
        if code: out.append(f'```python\n{code}\n```')
        for o in c.get('outputs', []):
            d = o.get('data', {})
            txt = o.get('text') or d.get('text/markdown') or (None if 'image/png' in d else d.get('text/plain'))
            if txt:
                txt = ''.join(txt).rstrip()
                if txt and not txt.startswith('<'): out.append(txt if 'text/markdown' in d else f'```\n{txt}\n```')
    return '\n\n'.join(out) + '\n'

if __name__ == '__main__':
    md = '<!-- generated from nbs/index.ipynb by tools/readme.py: do not edit -->\n\n' + to_md(json.loads(Path('nbs/index.ipynb').read_text()))
    if '--check' in sys.argv:
        if Path('README.md').read_text() != md: print('README.md is out of step with nbs/index.ipynb: run python tools/readme.py'); sys.exit(1)
    else: Path('README.md').write_text(md)
