"The docs site's API entries: every function, class and patched method nbdev documents has a docstring to show."
import importlib, inspect, pkgutil, re
from pathlib import Path
import pytest
from nbdev.process import NBProcessor
from nbdev.processors import _want_doc, _def_names, add_show_docs, _show_docs, _get_nm  # (nbdev's own rule for which definitions get a `show_doc`)
import initcb

NBS = sorted(p for p in (Path(__file__).parent.parent/'nbs').rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts)
MODS = [importlib.import_module(f'initcb.{m.name}') for m in pkgutil.iter_modules(initcb.__path__) if not m.name.startswith('_')]

def resolve(name):
    "The object a documented name (`f`, `Class`, `Class.method`) stands for, from whichever initcb module defines it"
    first, *rest = name.split('.')
    for m in MODS:
        if first in vars(m) and (not rest or hasattr(vars(m)[first], rest[0])):
            o = vars(m)[first]
            for r in rest: o = getattr(o, r)
            return o
    raise LookupError(name)

def documented():
    "(notebook, name) of every definition nbdev's docs processing gives an API entry"
    for nb in NBS:
        for c in NBProcessor(nb).nb.cells:
            if _want_doc(c): yield from ((nb.name, n) for n in _def_names(c, set()))

def test_entries_found():
    names = {n for _, n in documented()}
    assert {'ActivationHealth', 'ActivationHealth.before_batch', 'GradientHealth.after_step', 'Learner.health_report'} <= names

@pytest.mark.parametrize('nb,name', sorted(set(documented())))
def test_api_entry_has_docstring(nb, name):
    assert (inspect.getdoc(resolve(name)) or '').strip(), f'{nb}: {name} gets an API entry on the docs site, with no docstring'

def shown(nb):
    "The names of every visible `show_doc` in notebook `nb` once nbdev's docs processing has added its own"
    p = NBProcessor(nb, procs=[add_show_docs]); p.process()
    return {_get_nm(t) for c in p.nb.cells if c.cell_type == 'code' and 'show_doc(' in c.source and 'hide' not in c.directives_ for t in _show_docs(c.parsed_() or [])}

def is_property(name):
    first, *rest = name.split('.')
    return len(rest) == 1 and isinstance(inspect.getattr_static(resolve(first), rest[0], None), property)

@pytest.mark.parametrize('nb', NBS, ids=lambda p: p.name)
def test_properties_not_shown_as_calls(nb):
    "nbdev 3's `show_doc` renders a property as its getter, `def events():`: each one gets a `### Class.name` markdown entry saying it is a property instead"
    props = [n for b, n in documented() if b == nb.name and is_property(n)]
    if not props: return
    md, sd = '\n'.join(c.source for c in NBProcessor(nb).nb.cells if c.cell_type == 'markdown'), shown(nb)
    for name in props:
        assert name not in sd, f'{nb.name}: {name} is a property, shown as a call (`def {name.split(".")[1]}():`)'
        assert f'### {name}\n' in md and 'a property' in md.split(f'### {name}\n')[1][:300], f'{nb.name}: {name} has no markdown entry saying it is a property'

def test_no_dunder_entries():
    "A dunder's heading renders as 'Class.**del**' (markdown bold): none gets an entry"
    bad = [n for nb in NBS for n in shown(nb) if n.split('.')[-1].startswith('__')]
    assert not bad, bad

def examples():
    "(notebook, cell, code) of every ```python block in the notebooks' markdown, but the property entries (`Class.name  # a property...`)"
    for nb in NBS:
        for i, c in enumerate(NBProcessor(nb).nb.cells):
            if c.cell_type != 'markdown': continue
            for b in re.findall(r'```python\n(.*?)```', c.source, re.S):
                if not re.match(r'\w+\.\w+  # a property', b): yield nb.name, i, b

@pytest.mark.parametrize('nb,cell,code', list(examples()), ids=lambda x: str(x)[:30])
def test_markdown_examples_run(nb, cell, code):
    "A code example shown in the prose runs as copied, in a fresh namespace; a callback it defines runs through a short fit"
    ns = {}
    exec(compile(code, f'{nb} cell {cell}', 'exec'), ns)
    from fastai.callback.core import Callback
    cbs = [v() for v in ns.values() if isinstance(v, type) and issubclass(v, Callback) and v.__module__ == ns.get('__name__', 'builtins')]
    if not cbs: return
    from torch import nn
    from fastai.learner import Learner
    from initcb.core import digits_dls
    from initcb.activations import ActivationHealth
    learn = Learner(digits_dls(flat=True, n_train=64, bs=32), nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)), loss_func=nn.CrossEntropyLoss(), cbs=[ActivationHealth(), *cbs])
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
