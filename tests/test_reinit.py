"ReinitDormant: function preservation across the structures it follows, and skipping what it cannot."
import pickle, warnings, pytest, torch
from torch import nn
from fastai.layers import ConvLayer
from fastai.test_utils import synth_learner
from fastai.torch_core import set_seed
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from initcb.reinit import ReinitDormant, unit_chains, dormancy_scores, reinit_units, reinit_dormant, OUTPUT_LAYER
from helpers import quiet, bad_argument_named

@pytest.mark.parametrize('seed', range(3))
def test_conv_bn_act_conv_function_preserved(seed):
    "Conv -> BatchNorm (trained running stats) -> ReLU -> Conv, and fastai ConvLayer blocks: output equal to 1e-5 after re-initializing dead channels"
    torch.manual_seed(seed)
    m = nn.Sequential(ConvLayer(3, 8), ConvLayer(8, 8, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    x = torch.randn(16, 3, 8, 8)
    m.train(); m(x); m(x)  # running statistics away from their init
    with torch.no_grad(): m[0][1].bias[[2, 6]] = -50.; m[1][1].bias[1] = -50.
    ch = unit_chains(m)
    assert ch['0.0'][0] == dict(norm='0.1', act='0.2', act_call=0, act_fn=None, flatten=False, next='1.0')
    assert ch['1.0'][0]['next'] == '4' and ch['1.0'][0]['flatten']
    sc = dormancy_scores(m, x, ch)
    d0, d1 = (sc['0.0'] == 0).nonzero().flatten().tolist(), (sc['1.0'] == 0).nonzero().flatten().tolist()
    assert {2, 6} <= set(d0) and 1 in d1
    m.eval()
    with torch.no_grad(): y0 = m(x)
    reinit_units(m, '0.0', d0, ch['0.0'][0]); reinit_units(m, '1.0', d1, ch['1.0'][0])
    with torch.no_grad(): y1 = m(x)
    torch.testing.assert_close(y0, y1, rtol=0, atol=1e-5)
    assert (m[0][1].running_mean[[2, 6]] == 0).all() and (m[0][1].running_var[[2, 6]] == 1).all()

def test_unsupported_structures_skipped_with_a_message():
    class Res(nn.Module):
        def __init__(self): super().__init__(); self.a, self.b = nn.Linear(1, 4), nn.Linear(4, 1)
        def forward(self, x): h = torch.relu(self.a(x)); return self.b(h + h.mean())
    learn = quiet(synth_learner(n_trn=2))
    learn.model = Res()
    cb = ReinitDormant(every=1)
    learn.add_cb(cb)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); learn.fit(1)
    msgs = [str(x.message) for x in w if 'ReinitDormant' in str(x.message)]
    assert any('skips 1 layer: a: the output of relu after it has 2 consumers' in s for s in msgs) and any('no layer it can handle' in s for s in msgs)
    assert not any("output layer" in s for s in msgs)  # (b, the output layer, is never re-initialized: nothing to warn about)
    assert len(cb.events) == 0

@pytest.mark.parametrize('kw', [dict(every=0), dict(tau=-0.1), dict(max_frac=1.5), dict(scheme='x'), dict(start=-1), dict(shrink=2.), dict(verbose='no'), dict(verbose=None)])
def test_bad_arguments(kw): bad_argument_named(ReinitDormant, kw)

@pytest.mark.parametrize('kw', [dict(tau=-1.), dict(tau=float('nan')), dict(tau='0.1'), dict(max_frac=5.), dict(max_frac=-0.1), dict(min_frac=float('nan')), dict(min_frac=1.5)])
def test_reinit_dormant_bad_arguments(kw):
    m = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    bad_argument_named(lambda **k: reinit_dormant(m, torch.randn(3, 2), **k), kw)

def test_resnet_skips_in_one_warning():
    "fastai's xresnet18: a dozen layers feed a residual add; one warning names them, grouped by reason, once per callback"
    from fastai.vision.models.xresnet import xresnet18
    from fastai.learner import Learner
    from initcb.core import digits_dls
    learn = quiet(Learner(digits_dls(n_train=64), xresnet18(c_in=1, n_out=10), loss_func=nn.CrossEntropyLoss(), cbs=ReinitDormant(every=100)))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); learn.fit(1); learn.fit(1)
    msgs = [str(x.message) for x in w if 'ReinitDormant' in str(x.message)]
    assert len(msgs) == 1 and 'feeds add, which ReDo cannot follow' in msgs[0] and 'more' in msgs[0], msgs

def test_shrink_perturb_whole_layers():
    "scheme='shrink_perturb': every weight layer becomes shrink * w + perturb * fresh init, the output layer too (as in Ash & Adams: every parameter)"
    learn = quiet(synth_learner(n_trn=3))
    torch.manual_seed(0)
    learn.model = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1))
    w0, last = learn.model[0].weight.detach().clone(), learn.model[2].weight.detach().clone()
    cb = ReinitDormant(every=100, scheme='shrink_perturb', shrink=0.5, perturb=0.0, verbose=False)
    learn.add_cb(cb); learn.fit(1, lr=0.)
    torch.testing.assert_close(learn.model[0].weight, 0.5 * w0)
    torch.testing.assert_close(learn.model[2].weight, 0.5 * last)
    assert list(cb.events['layer']) == ['0', '2']

def _off_running_stats_net():
    "Linear -> BatchNorm -> ReLU -> Linear whose running mean (5) is far from its batches' (about 0): as a few batches into training"
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad(): m[1].running_mean.fill_(5.)
    return m

def test_scores_use_the_batch_statistics_by_default():
    "Every reader that scores one batch (dormancy_scores, ActivationHealth.dormancy, output_stds) sees BatchNorm as training does, changes nothing, and can ask for the running statistics"
    from initcb.activations import ActivationHealth
    from initcb.init import output_stds
    m, x = _off_running_stats_net(), torch.randn(64, 3)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    ch = unit_chains(m)
    assert (dormancy_scores(m, x, ch)['0'] > 0.2).all()
    assert (dormancy_scores(m, x, ch, bn='running')['0'] == 0).all()  # (normalized with a mean of 5: every unit reads dead)
    learn = quiet(synth_learner(n_trn=2)); learn.model = m
    ah = ActivationHealth(modules=[m[2]]); learn.add_cb(ah)
    assert (ah.dormancy(x)['2'] > 0.2).all() and (ah.dormancy(x, bn='running')['2'] == 0).all()
    assert abs(output_stds(m, x)['1'] - 1) < 1e-3 and output_stds(m, x, bn='running')['1'] < 0.9
    for k, v in m.state_dict().items(): assert torch.equal(v, state[k]), k
    assert m.training
    bad_argument_named(lambda **kw: dormancy_scores(m, x, ch, **kw), dict(bn='train'))
    bad_argument_named(lambda **kw: ah.dormancy(x, **kw), dict(bn=None))

def test_frozen_batchnorm_stays_frozen():
    "fastai's BnFreeze keeps a frozen body's BatchNorm in eval mode through training: ReinitDormant's scoring (every batch here) must not put it back in train mode"
    from fastai.callback.core import Callback
    from fastai.callback.training import BnFreeze
    from fastai.learner import Learner
    from initcb.core import digits_dls
    class Modes(Callback):
        order = 0
        def before_fit(self): self.seen = []
        def after_pred(self):
            if self.training: self.seen.append(self.model[0][1].training)
    torch.manual_seed(0)
    m = nn.Sequential(ConvLayer(1, 8), ConvLayer(8, 8, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    m[0].requires_grad_(False)  # (a frozen body, as `fine_tune` has: BnFreeze puts the BatchNorm layers with frozen parameters in eval mode)
    learn = quiet(Learner(digits_dls(n_train=256), m, loss_func=nn.CrossEntropyLoss(), cbs=[BnFreeze(), ReinitDormant(every=1, verbose=False), Modes()]))
    learn.fit(1, 1e-3)
    assert len(learn.modes.seen) == 4 and not any(learn.modes.seen), learn.modes.seen

@pytest.mark.parametrize('scheme', ['redo', 'shrink_perturb'])
def test_frozen_layers_left_as_they_are(scheme):
    "fine_tune's first phase: the body frozen. Its dead units are scored, not re-initialized (nor are the units feeding it), nor perturbed; the head's are"
    from fastai.learner import Learner
    from initcb.core import digits_dls
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10))
    with torch.no_grad(): m[1].bias[:4] = -100.; m[3].bias[:4] = -100.  # dead units in the body (1) and in the head (3)
    m[1].requires_grad_(False)
    frozen = [p.clone() for p in m[1].parameters()]
    learn = quiet(Learner(digits_dls(n_train=128), m, loss_func=nn.CrossEntropyLoss(), cbs=ReinitDormant(every=1, scheme=scheme, verbose=False)))
    learn.fit(1, 1e-3)
    assert all(torch.equal(a, b) for a, b in zip(frozen, m[1].parameters()))
    ev, ck = learn.reinit_dormant.events, learn.reinit_dormant.checks
    assert set(ev.layer) == ({'3'} if scheme == 'redo' else {'3', '5'}), ev  # (shrink_perturb: the output layer too)
    if scheme == 'redo': assert (ck.query("layer == '1'").dormant_frac >= 0.25).all()  # (scored all the same)

def test_grouped_consumer_and_its_optimizer_state():
    "Conv -> ReLU -> depthwise conv (groups=8): a dead channel's outgoing weights are its one depthwise filter; Adam's state zeroed there only, the output unchanged"
    from fastai.optimizer import Adam
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    x, opt = torch.randn(4, 3, 8, 8), Adam(m.parameters(), lr=1e-3)
    m(x).square().mean().backward(); opt.step()
    with torch.no_grad(): m[0].bias[5] = -100.; y0 = m(x)
    st = {k: v.clone() for k, v in opt.state[m[2].weight].items() if isinstance(v, torch.Tensor) and v.ndim == 4}
    assert st and all((v.flatten(1).abs().sum(1) > 0).all() for v in st.values())
    reinit_units(m, '0', [5], unit_chains(m)['0'][0], opt)
    with torch.no_grad(): torch.testing.assert_close(m(x), y0, rtol=0, atol=1e-6)
    rest = [i for i in range(8) if i != 5]
    assert (m[2].weight[5] == 0).all() and (m[2].weight[rest].flatten(1).abs().sum(1) > 0).all()
    for k, v in st.items():
        now = opt.state[m[2].weight][k]
        assert (now[5] == 0).all() and torch.equal(now[rest], v[rest]), k

def test_units_on_their_axis():
    "A Linear's units are its last dim, a conv's dim 1: after a flatten a Linear's unit is every n-th column; pairs that read other axes are not followed"
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 16, 4))
    with torch.no_grad(): m[0].bias[[2, 9]] = -100.
    x = torch.randn(32, 5, 8)
    with torch.no_grad(): y0 = m(x)
    reinit_units(m, '0', [2, 9], unit_chains(m)['0'][0])
    with torch.no_grad(): torch.testing.assert_close(m(x), y0, rtol=0, atol=1e-6)
    assert (m[3].weight[:, [2 + 16 * t for t in range(5)]] == 0).all() and (m[3].weight[:, 16:32] != 0).any()
    class T(nn.Module):
        def __init__(self): super().__init__(); self.a, self.b = nn.Conv1d(2, 4, 3), nn.Linear(4, 1)
        def forward(self, x): return self.b(torch.flatten(self.a(x), start_dim=2))  # (b reads a's length, not its channels)
    why = lambda m, n='0': unit_chains(m)[n][1]
    assert why(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Conv1d(8, 4, 1), nn.Flatten(), nn.Linear(4, 1))) == 'a Linear feeds a conv'
    assert why(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Linear(4, 4), nn.Flatten(), nn.Linear(4, 1))) == 'a conv feeds a Linear without a flatten'
    assert why(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(2), nn.Linear(4, 1))) == 'it feeds Flatten, which ReDo cannot follow'
    assert why(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.MaxPool1d(2), nn.Linear(4, 1))) == 'it feeds MaxPool1d, which ReDo cannot follow'
    assert why(nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(8, 1))) == 'it feeds BatchNorm1d, which ReDo cannot follow'  # (on (B, 5, 8): it normalizes the 5 tokens)
    assert why(T(), 'a') == 'it feeds flatten, which ReDo cannot follow'

def test_tied_or_reused_layers_not_followed():
    "Weight tying (the head is the embedding's weight), a layer called twice, a weight read outside its layer: not followed, and reinit_dormant leaves the network as it was"
    class TiedLM(nn.Module):
        def __init__(s, V=20, D=8, H=16):
            super().__init__(); s.emb = nn.Embedding(V, D); s.l1 = nn.Linear(D, H); s.r1 = nn.ReLU(); s.l2 = nn.Linear(H, D); s.r2 = nn.ReLU(); s.head = nn.Linear(D, V, bias=False)
            s.head.weight = s.emb.weight
        def forward(s, t): return s.head(s.r2(s.l2(s.r1(s.l1(s.emb(t))))))
    class Twice(nn.Module):
        def __init__(s): super().__init__(); s.a = nn.Linear(8, 16); s.r1 = nn.ReLU(); s.l = nn.Linear(16, 16); s.r2 = nn.ReLU(); s.r3 = nn.ReLU(); s.h = nn.Linear(16, 2)
        def forward(s, x): x = s.r1(s.a(x)); x = s.r2(s.l(x)); x = s.r3(s.l(x)); return s.h(x)
    class Read(Twice):
        def forward(s, x): x = s.r2(s.l(s.r1(s.a(x)))); return s.h(x) + nn.functional.linear(x, s.l.weight).sum(-1, keepdim=True)
    torch.manual_seed(0)
    for m, x, dead, want in [(TiedLM(), torch.randint(0, 20, (32,)), 'l2', dict(l2='head shares its weights with emb')),
                             (Twice(), torch.randn(32, 8), 'l', dict(a='l is used 2 times in the forward', l='l is used 2 times in the forward')),
                             (Read(), torch.randn(32, 8), 'l', dict(a='l is used 2 times in the forward'))]:
        with torch.no_grad(): getattr(m, dead).bias[:4] = -100.
        ch = unit_chains(m)
        assert {n: ch[n][1] for n in want} == want, ch
        sd, y0 = {k: v.clone() for k, v in m.state_dict().items()}, m(x).detach()
        reinit_dormant(m, x, tau=0.)
        assert torch.equal(m(x), y0) and all(torch.equal(v, sd[k]) for k, v in m.state_dict().items())

def test_tracing_leaves_the_model_as_it_was():
    "torch.fx runs the forward's Python code on the real modules: each trace moved a step counter (buffer and attribute), an EMA, a list and"
    "the random state, and left a `_tensor_constant0` on the model (two `unit_chains`, no batch: 2 steps); in a fit, a step more than its batches"
    from initcb.reinit import unfollowed
    class Sched(nn.Module):  # (a schedule's step count, an EMA, a layer drop's draw: state a training forward moves)
        def __init__(s): super().__init__(); s.register_buffer('steps', torch.zeros((), dtype=torch.long)); s.register_buffer('avg', torch.ones(4)); s.k, s.seen = 0, []
        def forward(s, x):
            if not s.training: return x
            s.steps += 1; s.k += 1; s.seen.append(x)
            with torch.no_grad(): s.avg.mul_(0.9).add_(0.1 * x.mean(0))
            if torch.rand(()) < 0.: return x
            return (x - s.avg) / s.steps.float().sqrt()
    def net(): return nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 4), Sched(), nn.ReLU(), nn.Linear(4, 1))
    torch.manual_seed(0); m = net()
    sd, keys, rng = {k: v.clone() for k, v in m.state_dict().items()}, [set(s.__dict__) for s in m.modules()], torch.get_rng_state()
    assert unit_chains(m)['0'][0]['act'] == '1' and list(unfollowed(m, ['4'])) == ['4']
    assert all(torch.equal(v, sd[k]) for k, v in m.state_dict().items()) and (m[3].k, m[3].seen) == (0, []), (m[3].steps, m[3].k)
    assert [set(s.__dict__) for s in m.modules()] == keys and torch.equal(torch.get_rng_state(), rng)
    learn = quiet(synth_learner(n_trn=3, cbs=ReinitDormant(every=1000, verbose=False))); learn.model = net()
    learn.fit(1)
    assert int(learn.model[3].steps) == learn.model[3].k == len(learn.dls.train) == 3

def test_a_weights_dtype_read_is_no_second_use():
    "`x.to(self.l1.weight.dtype)` (a common idiom), `x.type_as(w)`, a weight's shape, `x.to(buffer)`: l1 'is used 2 times in the forward',"
    "not followed; a weight's values read outside its call still are a use (`F.linear(x, self.l.weight)`: test_tied_or_reused_layers_not_followed)"
    import torch.nn.functional as F
    class Net(nn.Module):
        def __init__(s): super().__init__(); s.l1, s.bn, s.l2 = nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 2)
        def forward(s, x):
            x = x.to(s.l1.weight.dtype).type_as(s.l2.weight).to(s.bn.running_mean)[:, :s.l1.weight.shape[1]]
            return s.l2(F.relu(s.bn(s.l1(x))))
    torch.manual_seed(0); m = Net(); x = torch.randn(32, 8)
    ch = unit_chains(m)
    assert ch['l1'] == (dict(norm='bn', act=None, act_call=0, act_fn=(F.relu, (), {}, 'bn'), flatten=False, next='l2'), None), ch['l1']
    with torch.no_grad(): m.bn.weight[:4] = 0.; m.bn.bias[:4] = -1.  # (4 units dead after the ReLU)
    m.eval(); y0 = m(x).detach(); m.train()
    assert reinit_dormant(m, x, ch)[0]['unit_ids'] == [0, 1, 2, 3]
    m.eval()
    with torch.no_grad(): torch.testing.assert_close(m(x), y0, rtol=0, atol=1e-5)

def test_not_in_lr_find_nor_get_preds():
    "lr_find puts the weights back: ReinitDormant neither acts, records nor counts batches there (nor in get_preds); the fit's first check is at its batch 0"
    from fastai.callback.schedule import lr_find  # (patches Learner.lr_find)
    learn = quiet(synth_learner(n_trn=8))
    torch.manual_seed(0)
    learn.model = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1))
    with torch.no_grad(): learn.model[0].bias[:8] = -100.
    cb = ReinitDormant(every=1000, min_examples=16); learn.add_cb(cb)  # (its batches' size: the first check at batch 0)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); learn.lr_find(num_it=5, show_plot=False); learn.get_preds()
    assert cb.n_seen == 0 and len(cb.events) == 0 and len(cb.checks) == 0 and (learn.model[0].bias[:8] < -50).all()
    assert not [x for x in w if 'ReinitDormant' in str(x.message)]
    learn.fit(1, lr=1e-3)
    ev = cb.events
    assert cb.n_seen == 8 and list(ev.batch) == [0] and list(ev.layer) == ['0'] and set(range(8)) <= set(ev.unit_ids[0]), ev

def test_activation_after_a_flatten_not_followed():
    "Conv -> Flatten -> ReLU -> Linear: the ReLU's output has a column per element, not per channel: not followed (it raised IndexError)"
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.ReLU(), nn.Linear(64, 3))
    with torch.no_grad(): m[0].weight[1] = 0; m[0].bias[1] = -1.  # channel 1 dead
    chain, why = unit_chains(m)['0']
    assert chain is None and 'after a flatten' in why
    x = torch.randn(8, 1, 4, 4)
    with warnings.catch_warnings(): warnings.simplefilter('ignore'); assert reinit_dormant(m, x) == [] or all(not r['units'] for r in reinit_dormant(m, x))

@pytest.mark.parametrize('widths', [(8, 8), (8, 16), (16, 8)])
def test_one_activation_module_called_after_every_layer(widths):
    "`self.act = nn.ReLU()` called after each layer (fastai's TabularModel does it too): each layer scored on its own call"
    "(both were scored on the last call: working units re-initialized, dead ones left, IndexError or a wrong count)"
    from initcb.activations import ActivationHealth
    a, b = widths
    class M(nn.Module):
        def __init__(s): super().__init__(); s.l1, s.l2, s.l3, s.act = nn.Linear(1, a), nn.Linear(a, b), nn.Linear(b, 1), nn.ReLU()
        def forward(s, x): return s.l3(s.act(s.l2(s.act(s.l1(x)))))
    torch.manual_seed(0); m = M(); x = torch.randn(64, 1)  # (synth_learner's input size, below)
    with torch.no_grad(): m.l1.bias[[5, 6, 7]] = -50.  # dead in l1, alive in l2
    ch = unit_chains(m)
    assert (ch['l1'][0]['act'], ch['l1'][0]['act_call'], ch['l2'][0]['act_call']) == ('act', 0, 1)
    with torch.no_grad(): dead = (torch.relu(m.l1(x)).sum(0) == 0).nonzero().flatten().tolist(); y0 = m(x)
    assert {5, 6, 7} <= set(dead)
    sc = dormancy_scores(m, x, ch)
    assert (len(sc['l1']), len(sc['l2'])) == (a, b) and (sc['l1'] == 0).nonzero().flatten().tolist() == dead
    rec = {r['layer']: r for r in reinit_dormant(m, x, ch)}
    assert rec['l1']['unit_ids'] == dead and rec['l1']['of'] == a
    with torch.no_grad(): torch.testing.assert_close(m(x), y0, rtol=0, atol=1e-5)
    learn = quiet(synth_learner(n_trn=2, cbs=ActivationHealth()))
    learn.model = M(); learn.fit(1)
    with torch.no_grad(): learn.model.l1.bias[[5, 6, 7]] = -50.
    with torch.no_grad(): dead = (torch.relu(learn.model.l1(x)).sum(0) == 0).nonzero().flatten().tolist()
    d = learn.activation_health.dormancy(x)  # (the module watched once, under its name: its first call, as recorded)
    assert len(d['act']) == a and (d['act'] == 0).nonzero().flatten().tolist() == dead

def test_tabular_model_dead_units_recycled():
    "fastai's TabularModel: Linear -> ReLU (one instance for every block) -> BatchNorm -> the next block's Linear: followed, dead units recycled"
    from fastai.tabular.model import TabularModel
    torch.manual_seed(0)
    m = TabularModel([(10, 4)], 3, 1, [32, 16]).eval()
    ch = unit_chains(m)
    assert ch['layers.0.0'][0] == dict(norm='layers.0.2', act='layers.0.1', act_call=0, act_fn=None, flatten=False, next='layers.1.0')
    assert ch['layers.1.0'][0]['act_call'] == 1 and m.layers[0][1] is m.layers[1][1]
    with torch.no_grad(): m.layers[0][0].weight[:16] = 0.  # (no bias: it has a BatchNorm)
    xb = (torch.randint(0, 10, (64, 1)), torch.randn(64, 3))
    with torch.no_grad(): y0 = m(*xb)
    rec = {r['layer']: r for r in reinit_dormant(m, xb, ch)}
    assert rec['layers.0.0']['unit_ids'] == list(range(16))
    # (a BatchNorm after the activation passes a dead unit on as its bias, fastai's 1e-3, and the next Linear has no bias
    # to take it: the output moves by that much, and the next BatchNorm takes the shift out in training)
    with torch.no_grad(): torch.testing.assert_close(m(*xb), y0, rtol=0, atol=1e-3)
    with torch.no_grad(): m.layers[0][0].weight[:16] = 0.; m.layers[0][2].bias.zero_(); y0 = m(*xb)
    reinit_dormant(m, xb, ch)
    with torch.no_grad(): torch.testing.assert_close(m(*xb), y0, rtol=0, atol=1e-5)  # (with a zero bias there: exactly)

def test_general_relu_followed_and_scored_from_its_rest():
    "initcb's GeneralRelu: not traced into (ReDo followed no layer in front of one), and a dead unit of GeneralRelu(sub=0.4),"
    "a constant -0.4, scores 0 (E|h| called it busy)"
    from initcb.init import GeneralRelu
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 16), GeneralRelu(sub=0.4), nn.Linear(16, 16), GeneralRelu(leak=0.1, sub=0.4), nn.Linear(16, 2))
    ch = unit_chains(m)
    assert ch['0'][0]['act'] == '1' and ch['2'][0]['act'] == '3'
    with torch.no_grad(): m[0].bias[:8] = -50.
    x = torch.randn(64, 4)
    assert (dormancy_scores(m, x, ch)['0'] == 0).nonzero().flatten().tolist() == list(range(8))

@pytest.mark.parametrize('act', ['F.relu', 'torch.relu', 'method', 'inplace', 'leaky'])  # (leaky: followed, and its units pass a gradient: none dormant)
def test_functional_activation_followed(act):
    "The PyTorch tutorials' style, `self.fc2(F.relu(self.fc1(x)))`: ReDo 'cannot follow relu' before; now scored through the same function"
    import torch.nn.functional as F
    fn = {'F.relu': F.relu, 'torch.relu': torch.relu, 'method': lambda h: h.relu(), 'inplace': lambda h: F.relu(h, inplace=True),
          'leaky': lambda h: F.leaky_relu(h, 0.01)}[act]
    class M(nn.Module):
        def __init__(s): super().__init__(); s.fc1, s.bn, s.fc2, s.fc3 = nn.Linear(4, 16), nn.BatchNorm1d(16), nn.Linear(16, 8), nn.Linear(8, 2)
        def forward(s, x): return s.fc3(fn(s.fc2(fn(s.bn(s.fc1(x))))))
    torch.manual_seed(0); m = M(); x = torch.randn(64, 4)
    ch = unit_chains(m)
    assert ch['fc1'][0]['norm'] == 'bn' and ch['fc1'][0]['act_fn'][3] == 'bn' and ch['fc2'][0]['act_fn'][3] == 'fc2'
    with torch.no_grad(): m.fc2.bias[[1, 5]] = -50.
    sc = dormancy_scores(m, x, ch)
    dead = (sc['fc2'] <= 0).nonzero().flatten().tolist()
    assert dead == ([] if act == 'leaky' else [1, 5]) and len(sc['fc1']) == 16
    if act == 'leaky': assert ch['fc2'][0]['act_fn'][0] is F.leaky_relu and 0.01 in (*ch['fc2'][0]['act_fn'][1], *ch['fc2'][0]['act_fn'][2].values()); return
    m.eval()
    with torch.no_grad(): y0 = m(x)
    reinit_units(m, 'fc2', [1, 5], ch['fc2'][0])
    with torch.no_grad(): torch.testing.assert_close(m(x), y0, rtol=0, atol=1e-5)

def test_fastai_flatten_followed():
    "fastai's Flatten (x.view(x.size(0), -1), traced into: 'its output has 2 consumers'), as in a ConvLayer stack"
    from fastai.layers import Flatten
    m = nn.Sequential(ConvLayer(3, 8, stride=2), ConvLayer(8, 16, stride=2), nn.AdaptiveAvgPool2d(1), Flatten(), nn.Linear(16, 3))
    ch = unit_chains(m)
    assert ch['1.0'][0] is not None and ch['1.0'][0]['flatten'] and ch['1.0'][0]['next'] == '4'
    assert unit_chains(nn.Sequential(nn.Conv2d(3, 8, 3), Flatten(full=True), nn.Linear(8 * 36 * 64, 3)))['0'][0] is None  # (the batch flattened too)

def test_lookahead_slow_weights_follow_the_new_units():
    "fastai's ranger (Lookahead): the slow copy of re-initialized rows and zeroed columns was left old, and the next sync"
    "(every k steps) blended them 50/50 back: the revived units died again and the network's output jumped"
    from fastai.optimizer import ranger
    from fastai.test_utils import synth_dbunch
    from fastai.learner import Learner
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
    with torch.no_grad(): m[2].bias[[0, 1]] = -50.
    learn = quiet(Learner(synth_dbunch(n_train=4), m, loss_func=nn.MSELoss(), opt_func=ranger))
    learn.fit(1, 1e-3)  # (the slow copy exists from the first step)
    x = torch.randn(32, 1)
    rec = {r['layer']: r for r in reinit_dormant(m, x, opt=learn.opt)}
    u = rec['2']['unit_ids']
    assert {0, 1} <= set(u)
    slow = {id(q): s for spg, pg in zip(learn.opt.slow_weights, learn.opt.param_lists) for s, q in zip(spg, pg)}
    assert torch.equal(slow[id(m[2].weight)][u], m[2].weight[u]) and torch.equal(slow[id(m[2].bias)][u], m[2].bias[u])
    assert torch.equal(slow[id(m[4].weight)][:, u], m[4].weight[:, u]) and (m[4].weight[:, u] == 0).all()

def test_activation_also_called_inside_an_untraced_module():
    "One ReLU instance after l1 and inside a TransformerEncoderLayer (a leaf for torch.fx): the traced call index is not the"
    "runtime one (l1 was scored on the encoder's 32-wide feed-forward: dead units missed, IndexError): not followed"
    class M(nn.Module):
        def __init__(s):
            super().__init__(); s.act = nn.ReLU()
            s.enc = nn.TransformerEncoderLayer(8, 2, dim_feedforward=32, activation=s.act, dropout=0.)
            s.l1, s.l2 = nn.Linear(8, 8), nn.Linear(8, 3)
        def forward(s, x): return s.l2(s.act(s.l1(s.enc(x))))
    torch.manual_seed(0); m = M(); x = torch.randn(5, 2, 8)
    with torch.no_grad(): m.l1.bias[:4] = -100.
    c, why = unit_chains(m)['l1']
    assert c is None and 'also called inside enc' in why
    assert all(len(r['unit_ids']) == 0 or r['layer'] != 'l1' for r in reinit_dormant(m, x, tau=0.5))

def test_text_cnn_max_over_time_followed():
    "Embedding -> Conv1d -> ReLU -> AdaptiveMaxPool1d -> Flatten -> Linear (text CNNs' max over time): AdaptiveMaxPool1d was not a pool ReDo knew"
    class T(nn.Module):
        def __init__(s): super().__init__(); s.e, s.c, s.a, s.p, s.f, s.l = nn.Embedding(50, 8), nn.Conv1d(8, 16, 3), nn.ReLU(), nn.AdaptiveMaxPool1d(1), nn.Flatten(), nn.Linear(16, 2)
        def forward(s, x): return s.l(s.f(s.p(s.a(s.c(s.e(x).transpose(1, 2))))))
    torch.manual_seed(0); m = T(); x = torch.randint(0, 50, (16, 12))
    with torch.no_grad(): m.c.bias[[3, 9]] = -50.
    assert unit_chains(m)['c'][0]['next'] == 'l'
    with torch.no_grad(): y0 = m(x)
    assert {r['layer']: r for r in reinit_dormant(m, x)}['c']['unit_ids'] == [3, 9]
    with torch.no_grad(): torch.testing.assert_close(m(x), y0, rtol=0, atol=1e-5)

def _dead_mlp(how=None):
    "A ReLU MLP whose layer 2 has every unit dead; compiled by `how` ('torch.compile', 'Module.compile') or not"
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
    with torch.no_grad(): m[2].bias.fill_(-50.)
    if how == 'torch.compile': return torch.compile(m)
    if how == 'Module.compile': m.compile()
    return m

@pytest.mark.parametrize('how', ['torch.compile', 'Module.compile'])
def test_compiled_model_revived_as_eager(how):
    "A compiled model (torch.fx cannot trace dynamo's wrapper; a compiled backward keeps no graph for the report's gradient checks):"
    "ReinitDormant and HealthCheck(remedy=True) trace and replay the module inside, eagerly, and do to it what they do to the eager model"
    import torch._dynamo
    from initcb.report import HealthCheck
    torch._dynamo.reset()
    res = []
    for h in (None, how):
        rd, hc = ReinitDormant(every=4, min_examples=16), HealthCheck(remedy=True, report=False)
        for cb in (rd, hc):
            set_seed(2); learn = quiet(synth_learner(n_trn=8)); learn.model = _dead_mlp(h); learn.add_cb(cb)  # (python's random too: the shuffle)
            with warnings.catch_warnings():
                warnings.simplefilter('ignore'); torch.manual_seed(1); learn.fit(1, 1e-2)
        res.append((rd.events[['batch', 'layer', 'units']], hc.actions, hc.report))
    (e0, a0, r0), (e1, a1, r1) = res
    first = lambda e: e[e.batch == 0].reset_index(drop=True)  # (later checks see weights trained by compiled kernels: rounding apart)
    assert (first(e0).layer == '2').any() and first(e1).equals(first(e0)), (e0, e1)
    assert list(a0.action) == ['ReinitDormant'] and a1.equals(a0), (a0, a1)  # (all of layer 2's dead units; not layer 0's 3 of 16 in a fit that learns)
    assert len(r1) and set(r1.problem) == set(r0.problem), (r0, r1)

def test_reasons_name_where_the_chain_stops():
    "A Linear inside a torch.nn container fx does not trace into (TransformerEncoderLayer) was 'not called in the traced forward';"
    "a layer whose activation feeds two heads was said to have 'its output has 2 consumers' (its own output has one)"
    enc = nn.Sequential(nn.Linear(4, 8), nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 1), nn.Linear(8, 2))
    ch = unit_chains(enc)
    assert ch['1.layers.0.linear1'] == (None, 'inside 1 (TransformerEncoder), which torch.fx does not trace into'), ch['1.layers.0.linear1']
    class TwoHeads(nn.Module):
        def __init__(s): super().__init__(); s.trunk, s.act, s.h1, s.h2 = nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1), nn.Linear(8, 1)
        def forward(s, x): h = s.act(s.trunk(x)); return s.h1(h) + s.h2(h)
    assert unit_chains(TwoHeads())['trunk'] == (None, 'the output of act after it has 2 consumers')
    assert unit_chains(nn.Sequential(nn.Linear(4, 4)))['0'][1] == OUTPUT_LAYER


def test_reinit_units_bad_input_named():
    "An unknown layer or a ReLU's name (KeyError, AttributeError), one int for `units` ('int' object is not iterable), the None chain of a layer"
    "`unit_chains` cannot follow (not subscriptable): cryptic; a tensor of indices, `(s <= tau).nonzero()`, was refused as not indices"
    from initcb.reinit import frozen_chain
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)); ch = unit_chains(m)
    for call, arg in ((lambda: reinit_units(m, 'nope', [0], ch['0'][0]), 'layer'), (lambda: reinit_units(m, '1', [0], ch['0'][0]), 'layer'),
                      (lambda: reinit_units(m, '0', 3, ch['0'][0]), 'units'), (lambda: reinit_units(m, '2', [0], ch['2'][0]), 'chain'),
                      (lambda: frozen_chain(m, 'nope', ch['0'][0]), 'layer'), (lambda: reinit_units(None, '0', [0], ch['0'][0]), 'model')):
        with pytest.raises(ValueError, match=f'`{arg}`'): call()
    w = m[0].weight.detach().clone()
    reinit_units(m, '0', torch.tensor([1, 5]), ch['0'][0])
    assert not torch.equal(m[0].weight[[1, 5]], w[[1, 5]]) and torch.equal(m[0].weight[[0, 2, 3, 4, 6, 7]], w[[0, 2, 3, 4, 6, 7]])
    assert (m[2].weight[:, [1, 5]] == 0).all()
    x = torch.randn(8, 4)  # (chains None: traced now, as `reinit_dormant` takes it)
    assert {k: v.tolist() for k, v in dormancy_scores(m, x).items()} == {k: v.tolist() for k, v in dormancy_scores(m, x, unit_chains(m)).items()}


def test_an_argument_the_scheme_does_not_read_is_said():
    with pytest.warns(UserWarning, match=r"`tau` not read with 'shrink_perturb'"): ReinitDormant(scheme='shrink_perturb', tau=0.05)
    with pytest.warns(UserWarning, match=r"`shrink` not read with 'redo'"): ReinitDormant(shrink=0.8)
    with warnings.catch_warnings(): warnings.simplefilter('error'); ReinitDormant(tau=0.05); ReinitDormant(scheme='shrink_perturb', shrink=0.8)

def _bn_cnn():
    "Three Conv-BatchNorm-ReLU blocks and a Linear head, for digits"
    torch.manual_seed(0)
    L = []
    for ni, nf, s in [(1, 16, 1), (16, 32, 2), (32, 64, 2)]: L += [nn.Conv2d(ni, nf, 3, stride=s, padding=1), nn.BatchNorm2d(nf), nn.ReLU()]
    return nn.Sequential(*L, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

def test_shrink_perturb_sets_batchnorm_statistics_and_optimizer_state_right():
    "shrink_perturb on an epoch's last batch, in a Conv-BN-ReLU net: validated at chance (0.1 for 0.95+), the BatchNorms' running var ~6x (1/0.4²)"
    "the shrunk layers' output's, Adam's moments those of the old weights' gradients; now the BatchNorms' statistics are re-estimated on the batch, the moments rescaled as the gradients are"
    from fastai.callback.core import Callback
    from fastai.learner import Learner
    from fastai.metrics import accuracy
    from initcb.core import digits_dls, eval_mode
    dls = digits_dls(bs=64); nb = len(dls.train)
    class Snap(Callback):
        order = 59  # (right before ReinitDormant's event)
        def after_step(self):
            if self.learn.train_iter == 2 * nb - 1: self.state = {k: v.clone() for k, v in self.learn.opt.state[self.learn.model[3].weight].items() if k in ('grad_avg', 'sqr_avg')}
    class Probe(Callback):
        order = 61  # (right after it)
        def before_fit(self): self.var = self.state = None
        def after_step(self):
            if self.learn.train_iter != 2 * nb - 1: return
            m, ins = self.learn.model, {}
            hs = [m[k].register_forward_hook(lambda b, i, o, k=k: ins.setdefault(k, i[0].detach())) for k in (1, 4, 7)]
            with eval_mode(m, 'batch'), torch.no_grad(): m(*self.learn.xb)  # (BatchNorm on the batch's statistics, none changed)
            for h in hs: h.remove()
            self.var = [(m[k].running_var, ins[k].var((0, 2, 3))) for k in (1, 4, 7)]
            self.state = {k: v.clone() for k, v in self.learn.opt.state[m[3].weight].items() if k in ('grad_avg', 'sqr_avg')}
    accs = {}
    for scheme in (None, 'shrink_perturb'):
        torch.manual_seed(0)
        cbs = [Snap(), Probe()] + ([ReinitDormant(every=5 * nb, start=2 * nb - 1, scheme=scheme, verbose=False)] if scheme else [])
        learn = quiet(Learner(dls, _bn_cnn(), loss_func=nn.CrossEntropyLoss(), metrics=accuracy, cbs=cbs))
        learn.fit(2, 1e-2)
        accs[scheme] = float(learn.recorder.values[-1][-1])
    assert list(learn.reinit_dormant.events.batch.unique()) == [2 * nb - 1]
    assert accs['shrink_perturb'] > accs[None] - 0.05, accs  # (validated right after the shrink: with the BatchNorms' old statistics, 0.1)
    for run, real in learn.probe.var: torch.testing.assert_close(run, real, rtol=1e-3, atol=1e-6)
    was, now = learn.snap.state, learn.probe.state  # (Adam's moments: as the gradient of 0.4·w is 2.5 times w's where a BatchNorm follows, its next step the size it was)
    torch.testing.assert_close(now['grad_avg'], was['grad_avg'] / 0.4); torch.testing.assert_close(now['sqr_avg'], was['sqr_avg'] / 0.16)

def test_shrink_perturb_every_weight_layer():
    "shrink_perturb shrank only the layers ReDo follows (10 of xresnet18's 24), warning ReDo's reasons ('feeds add'); now every Linear, conv (transposed too),"
    "RNN and embedding layer, the output layer too, through weight_norm's parametrization, a tied weight once; a hook-computed weight named with its reason"
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.vision.models.xresnet import xresnet18
    from torch.nn.utils.parametrizations import weight_norm
    from initcb.core import digits_dls
    torch.manual_seed(0)
    m = xresnet18(c_in=1, n_out=10, widen=0.25)
    w0 = {n: p.detach().clone() for n, p in m.named_parameters()}
    learn = quiet(Learner(digits_dls(n_train=64), m, loss_func=nn.CrossEntropyLoss(), cbs=ReinitDormant(every=100, scheme='shrink_perturb', shrink=0.5, perturb=0.)))
    with warnings.catch_warnings(): warnings.simplefilter('error'); learn.fit(1, 0.)  # (nothing it skips: no warning)
    layers = [n for n, l in m.named_modules() if isinstance(l, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 24 and sorted(learn.reinit_dormant.events.layer) == sorted(layers)
    for n, p in m.named_parameters():
        norm = isinstance(m.get_submodule(n.rpartition('.')[0]), nn.BatchNorm2d)  # (norm layers keep their scale and shift)
        torch.testing.assert_close(p, w0[n] if norm else 0.5 * w0[n]), n
    class LM(nn.Module):  # an embedding tied to the output layer, an LSTM, a ConvTranspose, a weight_norm Linear, a GroupNorm
        def __init__(s):
            super().__init__(); s.emb, s.rnn, s.up, s.gn, s.wn, s.head = nn.Embedding(10, 8), nn.LSTM(8, 8, batch_first=True), nn.ConvTranspose1d(8, 8, 1), nn.GroupNorm(2, 8), weight_norm(nn.Linear(8, 8)), nn.Linear(8, 10)
            s.head.weight = s.emb.weight
        def forward(s, t): return s.head(torch.relu(s.wn(s.gn(s.up(s.rnn(s.emb(t))[0].transpose(1, 2))).transpose(1, 2)))).mean(1)
    t, y = torch.randint(0, 10, (16, 5)), torch.randint(0, 10, (16,))
    dls = DataLoaders(DataLoader(list(zip(t, y)), bs=8), DataLoader(list(zip(t[:8], y[:8])), bs=8))
    torch.manual_seed(0); lm = LM()
    w0 = {n: p.detach().clone() for n, p in lm.named_parameters()}; wn0 = lm.wn.weight.detach().clone()
    learn = quiet(Learner(dls, lm, loss_func=nn.CrossEntropyLoss(), cbs=ReinitDormant(every=100, scheme='shrink_perturb', shrink=0.5, perturb=0.)))
    learn.fit(1, 0.)
    assert sorted(learn.reinit_dormant.events.layer) == ['emb', 'head', 'rnn', 'up', 'wn']
    torch.testing.assert_close(lm.emb.weight, 0.5 * w0['emb.weight'])  # (tied: shrunk once)
    torch.testing.assert_close(lm.wn.weight, 0.5 * wn0)
    for n in ('rnn.weight_ih_l0', 'rnn.bias_hh_l0', 'up.weight', 'head.bias'): torch.testing.assert_close(dict(lm.named_parameters())[n], 0.5 * w0[n])
    assert torch.equal(lm.gn.weight, w0['gn.weight'])
    old = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.utils.weight_norm(nn.Linear(16, 10)))
    learn = quiet(Learner(digits_dls(n_train=64, flat=True), old, loss_func=nn.CrossEntropyLoss(), cbs=ReinitDormant(every=100, scheme='shrink_perturb')))
    with pytest.warns(UserWarning, match=r"ReinitDormant skips 1 layer: 2: its weight is computed by a hook"): learn.fit(1, 0.)
    assert list(learn.reinit_dormant.events.layer) == ['0']

def test_layers_redo_cannot_handle_are_named():
    "A ConvTranspose2d with 4 of 8 channels dead: unit_chains, unfollowed and ReinitDormant's warning named only the Conv2d feeding it (Conv3d, LSTM: nothing at all)"
    from fastai.learner import Learner
    from initcb.core import digits_dls
    from initcb.reinit import unfollowed
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(8, 8, 2, stride=2), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    why = 'a ConvTranspose2d: ReDo follows the units of Linear, Conv1d and Conv2d layers only'
    assert unit_chains(m)['2'] == (None, why) and unfollowed(m, ['3']) == {'3': why}
    learn = quiet(Learner(digits_dls(n_train=64), m, loss_func=nn.CrossEntropyLoss(), cbs=ReinitDormant(every=100)))
    with pytest.warns(UserWarning, match=rf"ReinitDormant skips 2 layers: 0: it feeds ConvTranspose2d, which ReDo cannot follow; 2: {why}"): learn.fit(1, 0.)
    m3 = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2))
    ch = unit_chains(m3)
    assert ch['0'] == ch['2'] == (None, 'a Conv3d: ReDo follows the units of Linear, Conv1d and Conv2d layers only')
    class R(nn.Module):
        def __init__(s): super().__init__(); s.rnn, s.act, s.out = nn.LSTM(4, 8, batch_first=True), nn.ReLU(), nn.Linear(8, 2)
        def forward(s, x): return s.out(s.act(s.rnn(x)[0][:, -1]))
    assert unit_chains(R())['rnn'] == (None, 'a LSTM: ReDo follows the units of Linear, Conv1d and Conv2d layers only')
    up = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.ConvTranspose2d(4, 1, 2, stride=2), nn.Sigmoid())
    assert unit_chains(up)['2'] == (None, OUTPUT_LAYER)  # (a decoder's output layer: its units are the outputs, not named in the warning)

@pytest.mark.parametrize('perturb', [0., 0.1])
def test_shrink_perturb_keeps_the_random_state(perturb):
    "shrink_perturb drew its fresh init from the global random state: shrink=1, perturb=0 changed a seeded run (its dropout masks from then on);"
    "now no shrink and no perturbation is nothing at all, and a perturbation comes from a stream of its own"
    from fastai.callback.core import Callback
    from fastai.learner import Learner
    from initcb.core import digits_dls
    class State(Callback):
        def __init__(self, order): self.order, self.states = order, []
        def after_step(self): self.states.append(torch.get_rng_state())
    def run(cbs):
        set_seed(0, reproducible=True)
        m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))
        learn = quiet(Learner(digits_dls(n_train=256, flat=True), m, loss_func=nn.CrossEntropyLoss(), cbs=cbs))
        learn.fit(2, 1e-2)
        return [p.detach().clone() for p in m.parameters()], learn
    before, after = State(59), State(61)
    w, learn = run([before, after, ReinitDormant(every=3, scheme='shrink_perturb', shrink=1., perturb=perturb, verbose=False)])
    assert len(learn.reinit_dormant.events) > 2 and all(torch.equal(a, b) for a, b in zip(before.states, after.states))
    if not perturb: assert all(torch.equal(a, b) for a, b in zip(w, run([])[0]))  # (bit for bit the run without it)


def test_shrink_perturb_moments_follow_each_layers_gradient():
    "The moments of every shrunk weight were divided by `shrink`, as a weight a norm layer follows has its gradient grow; any other layer's"
    "gradient shrinks with it (0.40x for shrink 0.4, measured): its momentum came out 6x its new gradients. And a fastai Embedding's"
    "perturbation was drawn from `reset_parameters`, PyTorch's N(0, 1): 12x the embedding's own scale after the shrink"
    from functools import partial
    from fastai.learner import Learner
    from fastai.callback.core import Callback
    from fastai.optimizer import SGD
    from fastai.layers import Embedding
    from initcb.core import digits_dls
    from initcb.reinit import _fresh
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    moms = {}
    class Grab(Callback):  # (the momenta just before and just after its event, at step 3)
        def __init__(self, when, order): self.when, self.order = when, order
        def after_step(self):
            if self.learn.train_iter == 3: moms[self.when] = {k: self.learn.opt.state[p]['grad_avg'].clone() for k, p in (('0', m[0].weight), ('2', m[2].weight))}
    learn = quiet(Learner(digits_dls(flat=True), m, loss_func=nn.CrossEntropyLoss(), opt_func=partial(SGD, mom=0.9),
                          cbs=[ReinitDormant(every=1000, start=3, scheme='shrink_perturb', perturb=0., verbose=False),
                               Grab('before', ReinitDormant.order - 1), Grab('after', ReinitDormant.order + 1)]))
    learn.fit(1, 1e-2)
    assert learn.reinit_dormant.events.batch.unique().tolist() == [3]
    torch.testing.assert_close(moms['after']['0'], moms['before']['0'] * 0.4)  # (no norm after it: its gradient shrinks with it)
    torch.testing.assert_close(moms['after']['2'], moms['before']['2'] / 0.4)  # (a BatchNorm after it: its gradient grows)
    f, _ = _fresh(Embedding(50, 8), torch.Generator().manual_seed(0).get_state())
    assert 0.005 < f.weight.pow(2).mean().sqrt() < 0.015  # (fastai's std 0.01, not N(0, 1))

# --- fastai's WeightDropout (every AWD_LSTM): shrink_perturb sets its `_raw` weights, ReDo leaves its layers alone

class _WDNet(nn.Module):
    "Embedding -> WeightDropout(LSTM) -> Linear: an AWD_LSTM's layers, tiny"
    def __init__(self, wrap_head=False):
        from fastai.text.models.awdlstm import WeightDropout
        super().__init__()
        self.emb, self.rnn, self.head = nn.Embedding(20, 8), WeightDropout(nn.LSTM(8, 8, batch_first=True), 0.5), nn.Linear(8, 2)
    def forward(self, x): return self.head(self.rnn(self.emb(x))[0][:, -1])

def _tok_learner(model, bs=16, n=48, cbs=None, **kw):
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.optimizer import SGD
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 20, (n + 16, 10), generator=g); y = (x[:, 0] > 10).long()
    dls = DataLoaders.from_dsets(list(zip(x[:n], y[:n])), list(zip(x[n:], y[n:])), bs=bs)
    return quiet(Learner(dls, model, loss_func=nn.CrossEntropyLoss(), opt_func=SGD, cbs=cbs, **kw))

def test_shrink_perturb_sets_weight_dropout_raw_weights():
    "shrink_perturb on a WeightDropout(LSTM): its `weight_hh_l0_raw` shrunk and perturbed with a fresh LSTM init (it crashed in deepcopy, the embedding shrunk already);"
    "the next forward, in eval mode too, runs on the new weights; the WeightDropout is not named as skipped"
    set_seed(0); m = _WDNet(); learn = _tok_learner(m)
    raw0, ih0, emb0 = m.rnn.weight_hh_l0_raw.detach().clone(), m.rnn.module.weight_ih_l0.detach().clone(), m.emb.weight.detach().clone()
    cb = ReinitDormant(every=1000, scheme='shrink_perturb', shrink=0.4, perturb=0.1); learn.add_cb(cb)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); learn.fit(1, lr=0.)  # (lr 0: the check alone changes the weights)
    assert not [x for x in w if 'ReinitDormant' in str(x.message)], [str(x.message) for x in w]
    assert list(cb.events.layer) == ['emb', 'rnn.module', 'head'], cb.events
    bound = 0.1 / 8 ** 0.5 + 1e-6  # (the LSTM's init: U(-1/sqrt(hidden), 1/sqrt(hidden)), times perturb)
    for now, was in ((m.rnn.weight_hh_l0_raw, raw0), (m.rnn.module.weight_ih_l0, ih0)):
        d = now.detach() - 0.4 * was
        assert d.abs().max() <= bound and d.abs().max() > bound / 2 and d.std() > bound / 4, (d.abs().max(), bound)
    assert not torch.equal(m.emb.weight, emb0)
    lstm = nn.LSTM(8, 8, batch_first=True)  # (a plain LSTM with the new weights: what the model must compute now, in eval mode)
    with torch.no_grad():
        for k, p in lstm.named_parameters(): p.copy_(m.rnn.weight_hh_l0_raw if k == 'weight_hh_l0' else getattr(m.rnn.module, k))
        torch.testing.assert_close(m.rnn.module.weight_hh_l0, m.rnn.weight_hh_l0_raw)  # (the weight it holds between forwards: the new one)
        x = torch.randint(0, 20, (4, 10)); m.eval()
        torch.testing.assert_close(m(x), m.head(lstm(m.emb(x))[0][:, -1]))

def test_shrink_perturb_awd_lstm_classifier():
    "A real AWD_LSTM text classifier (fastai's `get_text_classifier`, tiny): shrink_perturb every 2 steps trains through, every LSTM's `_raw` weight set"
    from fastai.text.models.core import get_text_classifier
    from fastai.text.models.awdlstm import AWD_LSTM, awd_lstm_clas_config
    from fastai.callback.rnn import ModelResetter, RNNCallback
    cfg = {**awd_lstm_clas_config, 'emb_sz': 8, 'n_hid': 12, 'n_layers': 2}
    set_seed(0); model = get_text_classifier(AWD_LSTM, 20, 2, seq_len=10, config=cfg)
    learn = _tok_learner(model, cbs=[ModelResetter(), RNNCallback()])
    raws = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith('_raw')}
    assert len(raws) == 2
    cb = ReinitDormant(every=2, scheme='shrink_perturb', verbose=False); learn.add_cb(cb)
    learn.fit(1, lr=1e-2)
    assert {'0.module.rnns.0.module', '0.module.rnns.1.module'} <= set(cb.events.layer), cb.events
    now = dict(model.named_parameters())
    assert all(not torch.equal(now[n], v) for n, v in raws.items())
    assert all(torch.isfinite(p).all() for p in model.parameters())

def test_shrink_perturb_failed_draw_changes_nothing():
    "A layer whose fresh init cannot be drawn: an error naming it, and no layer shrunk (it used to shrink the layers before it, then raise)"
    class Undrawable(nn.Linear):
        def reset_parameters(self):
            if getattr(self, 'ready', False): raise RuntimeError('no init here')
            super().reset_parameters()
    learn = quiet(synth_learner(n_trn=2))
    torch.manual_seed(0)
    learn.model = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), Undrawable(8, 1)); learn.model[2].ready = True
    w = [p.detach().clone() for p in learn.model.parameters()]
    learn.add_cb(ReinitDormant(every=1, scheme='shrink_perturb', verbose=False))
    with pytest.raises(RuntimeError, match="layer '2'.*no layer was changed"): learn.fit(1, lr=0.)
    assert all(torch.equal(a, b) for a, b in zip(w, learn.model.parameters()))

def test_redo_leaves_weight_dropout_layers_alone():
    "ReDo on a WeightDropout model: the LSTM named as not followed; a Linear inside a WeightDropout (its weight set from `_raw` at each forward) refused with why;"
    "`reinit_units` copies a layer holding a tensor of the autograd graph (deepcopy refused those)"
    from fastai.text.models.awdlstm import WeightDropout
    set_seed(0); m = _WDNet(); learn = _tok_learner(m)
    cb = ReinitDormant(every=1, tau=0.5); learn.add_cb(cb)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); learn.fit(1, lr=1e-2)
    msgs = [str(x.message) for x in w if 'ReinitDormant' in str(x.message)]
    assert any('rnn.module' in s and 'LSTM' in s for s in msgs), msgs
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), WeightDropout(nn.Linear(8, 8), 0.5, 'weight'), nn.ReLU(), nn.Linear(8, 2))
    net(torch.randn(3, 4)).sum().backward()  # (a training forward: the wrapped Linear's `weight` now a tensor of the graph)
    ch = unit_chains(net)
    assert ch['0'][0] is None and 'WeightDropout' in ch['0'][1] and ch['2.module'][0] is None and 'WeightDropout' in ch['2.module'][1], ch
    plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)); c = unit_chains(plain)['0'][0]
    plain[0].extra = plain[0].weight * 2  # (a non-leaf tensor left on the layer)
    reinit_units(plain, '0', [1, 2], c)
    assert plain[2].weight[:, [1, 2]].abs().sum() == 0

# --- dormancy scored on at least `min_examples` examples

def _bs1_mlp_learner(bs=1, n=40, cbs=None):
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n + 10, 10, generator=g); W = torch.randn(10, 3, generator=g); y = (X @ W).argmax(1)
    dls = DataLoaders.from_dsets(list(zip(X[:n], y[:n])), list(zip(X[n:], y[n:])), bs=bs)
    m = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    return quiet(Learner(dls, m, loss_func=nn.CrossEntropyLoss(), cbs=cbs)), X[:n]

def test_small_batches_scored_on_min_examples():
    "bs=1: a healthy ReLU MLP (0 and 1 units zero on every training example) had 6-17 of 32 units re-initialized at each check, scored on one example;"
    "now scored on the latest 32 examples, the first check waiting for them"
    set_seed(0); learn, X = _bs1_mlp_learner()
    m = learn.model
    with torch.no_grad(): h = m[1](m[0](X)); h2 = m[3](m[2](h))
    assert int((h.amax(0) <= 0).sum()) + int((h2.amax(0) <= 0).sum()) <= 1
    cb = ReinitDormant(every=10); learn.add_cb(cb)
    learn.fit(1, 1e-3)
    ck = cb.checks
    assert len(ck) and (ck.examples == 32).all() and ck.batch.min() == 31, ck  # (due at 0, run at 31: 32 examples seen)
    assert cb.events.units.sum() <= 2, cb.events

def test_min_examples_under_gradient_accumulation_and_export():
    "GradientAccumulation: every micro-batch's inputs count, `every` counts optimizer steps; `learn.export` pickles no batch, however the fit ended"
    from fastai.callback.training import GradientAccumulation
    from fastai.callback.core import Callback
    set_seed(0); learn, _ = _bs1_mlp_learner(bs=4, n=64)
    cb = ReinitDormant(every=1, verbose=False); learn.add_cbs([cb, GradientAccumulation(n_acc=8)])  # (a step every 2 batches of 4)
    learn.fit(1, 1e-3)
    ck = cb.checks
    assert cb.n_seen == 8 and ck.batch.min() == 3 and (ck.examples == 32).all(), (cb.n_seen, ck)  # (step 3: 8 batches, 32 examples)
    class Stop(Callback):
        def after_batch(self):
            if self.iter == 5: raise RuntimeError('stop')
    learn.remove_cb(GradientAccumulation)
    with pytest.raises(RuntimeError): learn.fit(1, 1e-3, cbs=Stop())
    assert cb._recent is not None and len(cb._recent.batches) == 6  # (the fit ended without after_fit: its 6 batches still held)
    assert cb.__getstate__()['_recent'] is None
    learn.remove_cb(Stop); back = pickle.loads(pickle.dumps(learn))  # (what `learn.export` does, less swapping the loaders for empty ones)
    assert back.reinit_dormant._recent is None and back.reinit_dormant.n_seen == cb.n_seen

def test_batches_that_do_not_concatenate_said_once():
    "Text of varying lengths: only the batches of the latest one's length are scored together, and a warning says so once a fit"
    from fastai.callback.core import Callback
    class Crop(Callback):  # (each batch's tokens cropped to 6 or 8: text of two lengths)
        def before_batch(self):
            if self.training: self.learn.xb = (self.xb[0][:, :6 if self.iter % 2 else 8],)
    set_seed(0); learn = _tok_learner(_Pool(), bs=4, n=64)
    cb = ReinitDormant(every=4, verbose=False); learn.add_cbs([cb, Crop()])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); learn.fit(1, 1e-3)
    msgs = [str(x.message) for x in w if 'ReinitDormant' in str(x.message)]
    assert len(msgs) == 1 and 'another shape past dim 0' in msgs[0] and 'fewer than `min_examples`=32' in msgs[0], msgs
    assert len(cb.checks) and (cb.checks.examples == 16).all(), cb.checks  # (4 of the 8 batches held: 16 examples of each length)

class _Pool(nn.Module):
    "Tokens embedded, averaged over any length, then an MLP"
    def __init__(self): super().__init__(); self.emb = nn.Embedding(20, 8); self.l1 = nn.Linear(8, 16); self.a = nn.ReLU(); self.l2 = nn.Linear(16, 2)
    def forward(self, x): return self.l2(self.a(self.l1(self.emb(x).mean(1))))

def test_get_preds_inside_a_fit_keeps_the_kept_inputs():
    "A callback's `get_preds` in `after_epoch` ran ReinitDormant's `before_fit`, which let go of the fit's kept inputs before seeing it was no fit: the next batch crashed"
    from fastai.callback.core import Callback
    torch.manual_seed(0)
    X = torch.randn(80, 10); y = (X[:, 0] > 0).long()
    dls = DataLoaders.from_dsets(list(zip(X[:64], y[:64])), list(zip(X[64:], y[64:])), bs=16, num_workers=0)
    class MidPreds(Callback):
        order, done = 70, False
        def after_epoch(self):  # (get_preds ends with an `after_epoch` of its own: once)
            if self.epoch == 0 and not self.done: self.done = True; self.learn.get_preds()
    learn = Learner(dls, nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2)), loss_func=nn.CrossEntropyLoss(), cbs=[ReinitDormant(every=2, verbose=False), MidPreds()])
    quiet(learn).fit(2, 1e-3)
    assert learn.reinit_dormant.checks.batch.max() >= 4  # (checks in the second epoch too)

def test_shrink_perturb_without_batchnorm_joins_no_inputs():
    "With no BatchNorm to re-estimate, shrink_perturb still joined the kept inputs at each check, and warned of too few examples for a forward it never ran"
    from fastai.callback.core import Callback
    class Pool(nn.Module):
        def __init__(self): super().__init__(); self.emb = nn.Embedding(20, 8); self.l1 = nn.Linear(8, 16); self.a = nn.ReLU(); self.l2 = nn.Linear(16, 2)
        def forward(self, x): return self.l2(self.a(self.l1(self.emb(x).mean(1))))
    class Crop(Callback):  # (text of two lengths: batches that do not join)
        def before_batch(self):
            if self.training: self.learn.xb = (self.xb[0][:, :6 if self.iter % 2 else 8],)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 20, (80, 10), generator=g); y = (x[:, 0] > 10).long()
    dls = DataLoaders.from_dsets(list(zip(x[:64], y[:64])), list(zip(x[64:], y[64:])), bs=4, num_workers=0)
    learn = Learner(dls, Pool(), loss_func=nn.CrossEntropyLoss(), cbs=[ReinitDormant(every=4, scheme='shrink_perturb', verbose=False), Crop()])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        quiet(learn).fit(1, 1e-3)
    assert len(learn.reinit_dormant.events) and not [m for m in w if 'min_examples' in str(m.message)]
