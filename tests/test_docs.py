"The docs site's API entries: every function, class and patched method nbdev documents has a docstring to show."
import importlib, inspect, pkgutil
from pathlib import Path
import pytest
from nbdev.process import NBProcessor
from nbdev.processors import _want_doc, _def_names  # (nbdev's own rule for which definitions get a `show_doc`)
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
