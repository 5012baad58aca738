"""nbdev's notebook processing for the docs, without quarto: nbs/ -> _proc/, ready for `smalldocs render _proc`.

nbdev_proc_nbs would first try to install quarto (impossible offline), so this calls the same steps directly.
smalldocs names each page after its file, while show_doc links use nbdev's page names (01_activations.ipynb ->
activations.html), so processed notebooks are renamed to nbdev's page names and sidebar.yml is rewritten to match.
"""
import re, shutil
from pathlib import Path
from nbdev.config import get_config
from nbdev.quarto import refresh_quarto_yml
from nbdev.serve import proc_nbs
import nbdev.doclinks

def page_name(p):
    "nbdev's page name: the numeric prefix dropped (nbpath2html)"
    return re.sub(r'^\d+[a-zA-Z0-9]*_', '', p.name)

def main():
    cfg = get_config()
    refresh_quarto_yml()
    nbdev.doclinks._build_modidx()
    proc = Path(proc_nbs(cfg.nbs_path, n_workers=0, force=True))
    renames = {}
    for nb in sorted(proc.rglob('*.ipynb')):
        new = nb.with_name(page_name(nb))
        if new != nb: nb.rename(new); renames[str(nb.relative_to(proc))] = str(new.relative_to(proc))
    sb = proc/'sidebar.yml'
    txt = sb.read_text()
    for a, b in renames.items(): txt = txt.replace(a, b)
    sb.write_text(txt)
    print(f'processed notebooks into {proc}; renamed {len(renames)}')

if __name__ == '__main__': main()
