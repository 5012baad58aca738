"""Check the built site: every sidebar page exists, local links resolve (their #anchors too, and symbol links to the site's
own address), API pages show signatures, plots are images."""
import re, sys, yaml
from pathlib import Path

def sidebar_pages():
    "(section, notebook, page path relative to the site) for every page the sidebar lists"
    sb = yaml.safe_load(Path('nbs/sidebar.yml').read_text())['website']['sidebar']['contents']
    def walk(items, section):
        for it in items:
            if isinstance(it, str): yield section, it
            else: yield from walk(it.get('contents', []), it.get('section', section))
    for section, p in walk(sb, ''):
        name = re.sub(r'^\d+[a-zA-Z0-9]*_', '', Path(p).name)
        yield section, p, Path(p).parent/Path(name).with_suffix('.html')

def missing_anchors(site):
    "Links with a #fragment, to a page of the site (relative, or a backticked symbol's link to the site's address) that has no element with that id"
    from nbdev.config import get_config
    cfg = get_config()
    own = f"{cfg.doc_host}{cfg.doc_baseurl}".rstrip('/') + '/'
    ids, errs = {}, []
    def idset(p):
        if p not in ids: ids[p] = set(re.findall(r'\bid="([^"]+)"', p.read_text())) if p.exists() else None
        return ids[p]
    for f in sorted(site.rglob('*.html')):
        for href in re.findall(r'href="([^"]*#[^"]*)"', f.read_text()):
            page, _, frag = href.partition('#')
            if page.startswith(own): target = site/page[len(own):]
            elif ':' in page or not frag: continue
            else: target = f.parent/page if page else f
            if not page.endswith('.html') and page: continue
            have = idset(target.resolve())
            if have is not None and frag not in have: errs.append(f'{f.relative_to(site)}: link {href} has no anchor #{frag} on its page')
    return errs

def main(site='_docs'):
    site, errs = Path(site), []
    html = {}
    for _, p, rel in sidebar_pages():
        f = site/rel
        if not f.exists(): errs.append(f'missing page {f} (from {p})'); continue
        html[f] = f.read_text()
    for f, txt in html.items():
        for href in re.findall(r'href="([^"#:?]+\.html)(?:#[^"]*)?"', txt):
            if not (f.parent/href).resolve().exists(): errs.append(f'{f.name}: broken link {href}')
        for src in re.findall(r'<img[^>]+src="([^"]+)"', txt):
            if src.startswith('data:'): continue
            if not (f.parent/src).exists(): errs.append(f'{f.name}: missing image {src}')
    errs += missing_anchors(site)
    if 'href="https://docs.fast.ai/learner.html#learner"' not in html.get(site/'index.html', ''):
        errs.append('index.html: `Learner` does not link to fastai\'s docs (strip_libs in [tool.nbdev])')
    act = html.get(site/'activations.html', '')
    if 'ActivationHealth' not in act: errs.append('activations.html does not document ActivationHealth')
    if not re.search(r'<img[^>]+src="(data:image/png|[^"]+\.png)', act): errs.append('activations.html has no rendered plot')
    if errs: print('\n'.join(errs)); sys.exit(1)
    print(f'docs OK: {len(html)} pages in {site}')

if __name__ == '__main__': main(*sys.argv[1:])
