"""Open every page of the built site in headless Chromium (Playwright driving the system's chromium) and check what a
reader sees: the page loads with no console error, reference pages show signatures with their documented arguments,
every image has a non-zero size, no progress bar or warning text. Screenshots of the index and a tutorial go into
ci_artifacts/screenshots/.

    python tools/browser_check.py [site]      # after `bash tools/docs`; exits 1 on any failure, 2 if no browser
"""
import functools, http.server, os, re, shutil, socketserver, sys, threading
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
from check_docs import sidebar_pages

SHOTS = Path('ci_artifacts/screenshots')
ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run']

def defines(nb:Path)->bool:
    "Whether notebook `nb` exports a module (`default_exp`) that defines a function or class: its page must show their signatures"
    m = re.search(r'#\| default_exp ([\w.]+)', nb.read_text())
    mod = m and Path('initcb')/(m.group(1).replace('.', '/') + '.py')
    return bool(mod and mod.exists() and re.search(r'^(?:def|class) ', mod.read_text(), re.M))

def chromium():
    "The Chromium binary: $CHROMIUM, Debian's (the real binary behind /usr/bin/chromium's wrapper script), or one on PATH"
    for c in [os.environ.get('CHROMIUM'), '/usr/lib/chromium/chromium', shutil.which('chromium'), shutil.which('chromium-browser'), shutil.which('google-chrome')]:
        if c and Path(c).exists(): return c

def serve(site):
    handler = functools.partial(type('Quiet', (http.server.SimpleHTTPRequestHandler,), {'log_message': lambda *a: None}), directory=str(site))
    srv = socketserver.ThreadingTCPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f'http://127.0.0.1:{srv.server_address[1]}'

SIGS = """() => [...document.querySelectorAll('pre code')].map(c => c.innerText).filter(t => /^(def|class) \\w+\\(/.test(t.trim())).length"""
DOCUMENTED = """() => [...document.querySelectorAll('pre code')].map(c => c.innerText.trim()).filter(t => /^(def|class) \\w+\\(/.test(t) && (t.includes('#') || /^(def|class) \\w+\\(\\s*\\)/.test(t))).length"""
UNDOC = """() => [...document.querySelectorAll('pre code')].map(c => c.innerText.trim()).filter(t => /^(def|class) \\w+\\(/.test(t) && !(t.includes('#') || /^(def|class) \\w+\\(\\s*\\)/.test(t))).map(t => t.split('(')[0].split(' ')[1])"""
IMGS = "els => els.map(e => [e.getAttribute('src').slice(0, 60), e.naturalWidth, e.naturalHeight])"

def main(site='_docs'):
    exe = chromium()
    if exe is None: print('browser check: no Chromium found (set $CHROMIUM or install the Debian package chromium)'); sys.exit(2)
    from playwright.sync_api import sync_playwright
    site, errs, n = Path(site), [], 0
    SHOTS.mkdir(parents=True, exist_ok=True)
    srv, base = serve(site)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=ARGS)
            external, undocumented = set(), []
            for section, nb, rel in sidebar_pages():
                page, console = browser.new_page(viewport={'width': 1280, 'height': 900}), []
                page.on('console', lambda m, c=console: c.append(f"{m.text} ({m.location.get('url', '')})") if m.type == 'error' else None)
                page.on('pageerror', lambda e, c=console: c.append(str(e)))
                # the theme's web font comes from fonts.googleapis.com: offline (CI) it cannot load, and that is not the site's fault
                def block(route, request): external.add(request.url.split('?')[0]); route.abort()
                page.route(lambda url: not url.startswith(base), block)
                resp = page.goto(f'{base}/{rel.as_posix()}', wait_until='load')
                page.wait_for_load_state('networkidle')
                where = rel.as_posix()
                if resp is None or resp.status != 200: errs.append(f'{where}: HTTP {resp.status if resp else "no response"}'); continue
                n += 1
                errs += [f'{where}: console error: {c}' for c in console if not any(e in c for e in ('ERR_FAILED', 'ERR_NAME_NOT_RESOLVED')) or base in c]
                for src, w, h in page.eval_on_selector_all('img', IMGS):
                    if not (w and h): errs.append(f'{where}: image {src} has no size')
                text = page.inner_text('main') if page.query_selector('main') else page.inner_text('body')
                for noise in ('█', 'Warning:', 'Epoch 1/'):
                    if noise in text: errs.append(f'{where}: shows {noise!r} (progress bar or warning text)')
                if defines(Path('nbs')/nb):  # a module's reference page, of a module that defines something (not `all`'s star imports)
                    sigs = page.evaluate(SIGS)
                    if sigs == 0: errs.append(f'{where}: no signature')
                    undocumented += [f"{where.replace('.html', '')}.{n}" for n in page.evaluate(UNDOC)]
                if where in ('index.html', 'tutorials/symmetry.html'):
                    page.screenshot(path=str(SHOTS/(where.replace('/', '_').replace('.html', '.png'))), full_page=True)
                page.close()
            browser.close()
    finally: srv.shutdown()
    if errs: print('\n'.join(errs)); sys.exit(1)
    print(f'browser check OK: {n} pages in headless Chromium ({exe}); screenshots in {SHOTS}/')
    print(f'  not loaded (external, blocked): {sorted(external) or "none"}; {len(undocumented)} signatures with arguments and no argument comments: {", ".join(undocumented) or "none"}')

if __name__ == '__main__': main(*sys.argv[1:])
