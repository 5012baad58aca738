"check_init, GeneralRelu, init_weights on the layer types users have."
import math, pytest, torch
from torch import nn
from initcb.init import check_init, init_weights, GeneralRelu, following_activation, SCHEMES
from initcb.core import ACTIVATION_TYPES, select_modules, writable_weight as writable
import warnings
from helpers import bad_argument_named

def cnn():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), GeneralRelu(leak=0.1, sub=0.4),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))

def test_conv_net_after_init_weights_is_ok():
    torch.manual_seed(0)
    m = init_weights(cnn())
    ci = check_init(m, torch.randn(32, 1, 8, 8))
    assert (ci['finding'].str.startswith('ok')).all(), ci[['layer', 'finding']]
    assert list(ci['activation'].fillna('-')) == ['GeneralRelu', '-', 'ReLU', '-']  # BatchNorm rows have no activation
    assert ci['output_std'].notna().all()

@pytest.mark.parametrize('scheme', SCHEMES)
def test_every_scheme_gives_finite_weights_and_zero_bias(scheme):
    m = init_weights(cnn(), scheme)
    assert all(torch.isfinite(p).all() for p in m.parameters())
    assert (m[0].bias == 0).all() and (m[6].bias == 0).all()

def test_constant_and_duplicate_units_found():
    torch.manual_seed(0)
    m = cnn()
    with torch.no_grad(): m[0].weight.fill_(0.3); m[3].weight[2] = m[3].weight[5]
    f = check_init(m).set_index('layer')['finding']
    assert f['0'].startswith('constant') and not f['3'].startswith('symmetric')  # same weights, another bias: a different function
    with torch.no_grad(): m[3].bias[2] = m[3].bias[5]
    assert check_init(m).set_index('layer')['finding']['3'].startswith('symmetric: 1 units')

def test_general_relu_watched_by_activation_health():
    assert GeneralRelu in ACTIVATION_TYPES
    assert [n for n, _ in select_modules(cnn())][:3] == ['0', '1', '2']

@pytest.mark.parametrize('kw', [dict(leak=-0.1), dict(leak=2.), dict(sub=float('nan')), dict(maxv=float('inf'))])
def test_general_relu_bad_arguments(kw): bad_argument_named(GeneralRelu, kw)

def test_general_relu_numpy_arguments(): assert type(GeneralRelu(leak=np.float32(0.1), sub=np.int64(0)).leak) is float

def test_bad_scheme(): bad_argument_named(lambda scheme: init_weights(cnn(), scheme), dict(scheme='he'))

# BreakSymmetry and LSUVInit
import numpy as np
from fastai.learner import Learner
from fastai.callback.core import Callback
from fastai.data.load import DataLoader
from fastai.callback.schedule import lr_find  # patches Learner.lr_find
from fastai.layers import ConvLayer
from fastcore.basics import noop
from fastai.test_utils import synth_learner
from initcb.init import BreakSymmetry, LSUVInit, break_symmetry, lsuv_init, duplicate_units, output_stds
from initcb.core import digits_dls
from helpers import quiet, n_hooks

def test_break_symmetry_on_every_layer_type():
    "Zero conv, constant embedding, zero LSTM, duplicated linear units: each fixed; norm layers never touched"
    torch.manual_seed(0)
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.emb, self.rnn, self.lin = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Embedding(5, 3), nn.LSTM(3, 4), nn.Linear(4, 6)
        def forward(self, x): return x
    m = M()
    with torch.no_grad():
        m.conv.weight.zero_(); m.emb.weight.fill_(0.5)
        for p in m.rnn.parameters(): p.zero_()
        m.lin.weight[4] = m.lin.weight[2]; m.lin.bias[4] = m.lin.bias[2]
    bn = {k: v.clone() for k, v in m.bn.state_dict().items()}
    rep = break_symmetry(m).set_index('layer')
    assert rep['was'].to_dict() == {'conv': 'zero', 'emb': 'constant', 'rnn': 'zero', 'lin': 'symmetric'}
    assert rep.loc['lin', 'units_reinitialized'] == 1
    assert all(torch.equal(v, m.bn.state_dict()[k]) for k, v in bn.items())
    assert len(break_symmetry(m)) == 0  # nothing left to do
    assert duplicate_units(m.lin.weight, m.lin.bias) == []

def test_break_symmetry_drops_optimizer_state_of_changed_params():
    learn = quiet(synth_learner(n_trn=2, cbs=BreakSymmetry(verbose=False)))
    learn.fit(1)  # nothing symmetric: nothing changed
    assert len(learn.break_symmetry.report) == 0
    lin = nn.Linear(1, 4); learn.model = nn.Sequential(lin, nn.ReLU(), nn.Linear(4, 1)); learn.create_opt()
    learn.loss_func = lambda p, y: ((p.squeeze(-1) - y) ** 2).mean()
    learn.fit(1)
    assert learn.opt.state[lin.weight]  # the optimizer has state for it now
    with torch.no_grad(): lin.weight.zero_(); lin.bias.zero_()
    learn.opt.state[lin.weight]['marker'] = 1
    learn.fit(1)
    assert list(learn.break_symmetry.report['was']) == ['zero'] and lin.weight.abs().sum() > 0
    assert 'marker' not in learn.opt.state[lin.weight]

def digits_learner(model, cbs):
    return quiet(Learner(digits_dls(flat=True, n_train=256), model, loss_func=nn.CrossEntropyLoss(), cbs=cbs))

def deep(n=8, ni=64):
    return nn.Sequential(*[l for k in range(n) for l in (nn.Linear(ni if k == 0 else 32, 32), nn.ReLU())], nn.Linear(32, 10))

def test_lsuv_once_and_not_in_lr_find():
    torch.manual_seed(0)
    learn = digits_learner(deep(), LSUVInit(verbose=False))
    learn.lr_find(num_it=5, show_plot=False)
    assert not learn.lsuv_init.done  # lr_find restores the weights it began with: LSUV waits for the real fit
    learn.fit(1, 1e-3)
    assert learn.lsuv_init.done and (learn.lsuv_init.report.status == 'ok').all()
    w = learn.model[0].weight.detach().clone()
    learn.fit(1, 0.)  # a second fit does not re-initialize
    assert torch.equal(w, learn.model[0].weight)

def test_lsuv_fastai_conv_layers_with_batchnorm():
    "ConvLayer blocks (conv + BatchNorm + ReLU): conv outputs at std 1, BatchNorm statistics and the mode untouched"
    torch.manual_seed(0)
    m = nn.Sequential(ConvLayer(1, 8), ConvLayer(8, 16, stride=2), ConvLayer(16, 16, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    bufs = [b.clone() for b in m.buffers()]
    xb = torch.randn(32, 1, 8, 8)
    rep = lsuv_init(m, xb, tol=0.05)
    assert (rep.status == 'ok').all() and (rep['std'] - 1).abs().max() <= 0.05
    assert m.training and all(torch.equal(a, b) for a, b in zip(bufs, m.buffers()))

def test_lsuv_dl_argument_and_bad_input():
    x = torch.randn(16, 64); y = torch.randint(0, 10, (16,))
    torch.manual_seed(0)
    learn = digits_learner(deep(), LSUVInit(dl=[(x, y)], verbose=False))
    learn.fit(1, 1e-3)
    assert learn.lsuv_init.done
    with pytest.raises(ValueError, match='`dl` is empty'): LSUVInit(dl=[])  # (at once; an empty DataLoader: at the fit)
    learn = digits_learner(deep(), LSUVInit(dl=DataLoader([], bs=4), verbose=False))
    with pytest.raises(ValueError, match='`dl` is empty'): learn.fit(1)
    assert n_hooks(learn.model) == 0
    with pytest.raises(ValueError, match='`model` has no Linear or Conv layer'): lsuv_init(nn.Sequential(nn.ReLU()), x)
    for kw in [dict(target_std=0), dict(tol=-1), dict(max_iters=0), dict(max_iters=1.5), dict(dl=5), dict(dl='train'), dict(centre=1), dict(verbose='no')]:
        bad_argument_named(LSUVInit, kw)
    bad_argument_named(BreakSymmetry, dict(verbose='no'))
    cb = LSUVInit(target_std=np.float32(1), max_iters=np.int64(3), verbose=np.True_)
    assert type(cb.target_std) is float and type(cb.max_iters) is int and cb.verbose is True

def test_lsuv_never_makes_nan():
    "Non-finite or all-zero outputs are reported and skipped: no weight becomes NaN"
    m = deep(3)
    rep = lsuv_init(m, torch.full((8, 64), float('nan')))
    assert set(rep.status) == {'non-finite output: skipped'}
    rep = lsuv_init(m, torch.zeros(8, 64))
    assert 'std 0' in rep.status.iloc[0]  # (it keeps its bias: the layers after it see that bias, not zeros)
    assert all(torch.isfinite(p).all() for p in m.parameters())

def test_learner_with_init_callbacks_exports(tmp_path):
    import pickle
    learn = digits_learner(deep(), [BreakSymmetry(verbose=False), LSUVInit(verbose=False)])
    learn.fit(1, 1e-3)
    learn.logger = noop
    back = pickle.loads(pickle.dumps(learn))  # what learn.export does, less swapping the loaders for empty ones
    assert back.lsuv_init.done and len(back.lsuv_init.report) == 9

def test_conv_transpose_units_are_output_channels():
    "A ConvTranspose's weight is (in, out/groups, *k): its units are dim 1, and each input spreads over stride-many outputs"
    from initcb.init import check_init, init_weights
    torch.manual_seed(0)
    for g in (1, 2):
        up = nn.Sequential(nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1, groups=g))
        with torch.no_grad(): up[0].weight[:, 1] = up[0].weight[:, 0]; up[0].bias[1] = up[0].bias[0]  # output channel 1 = 0
        ci = check_init(up)  # (it raised: the bias has 4 entries, the weight 8 rows)
        assert ci.duplicate_units[0] == 1 and ci.finding[0].startswith('symmetric'), ci
        rep = break_symmetry(up)
        assert rep.units_reinitialized.tolist() == [4] and not check_init(up).finding[0].startswith('symmetric')
    for cin, cout in ((16, 64), (64, 64), (64, 16)):
        up = init_weights(nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)), 'lecun')
        std = up(torch.randn(64, cin, 8, 8)).std().item()
        assert 0.8 < std < 1.25, (cin, cout, std)  # (its fan-in read as out*k*k: 0.23-0.47)

def test_grouped_conv_symmetry_only_within_a_group():
    "Units of different groups read different inputs: equal filters across groups are no symmetry"
    from initcb.init import check_init
    dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    with torch.no_grad(): dw.weight.fill_(1 / 9)  # a depthwise box blur
    assert check_init(nn.Sequential(dw)).duplicate_units[0] == 0 and len(break_symmetry(nn.Sequential(dw))) == 0
    with torch.no_grad(): dw.weight.zero_(); dw.weight[:, 0, 1, 1] = 1.  # depthwise identity (Dirac)
    assert len(break_symmetry(nn.Sequential(dw))) == 0 and (dw.weight[:, 0, 1, 1] == 1).all()
    gc = nn.Conv2d(8, 8, 3, groups=2)
    with torch.no_grad():
        gc.weight[4:] = gc.weight[:4]; gc.bias[4:] = gc.bias[:4]  # group 1 repeats group 0: different inputs, no symmetry
    assert len(break_symmetry(nn.Sequential(gc))) == 0
    with torch.no_grad(): gc.weight[6] = gc.weight[5]; gc.bias[6] = gc.bias[5]  # within group 1: a real twin
    rep = break_symmetry(nn.Sequential(gc))
    assert rep.units_reinitialized.tolist() == [1] and not torch.equal(gc.weight[6], gc.weight[5])

def test_fastai_embedding_scale_is_no_finding():
    "fastai initializes embeddings at std 0.01 on purpose (a lookup, not a step through depth)"
    from fastai.layers import Embedding
    from initcb.init import check_init
    assert check_init(nn.Sequential(Embedding(20, 8))).finding[0] == 'ok'

def test_break_symmetry_keeps_fastai_param_flags():
    "The optimizer state of a re-initialized parameter goes, but fastai's `do_wd` (False for biases) stays: no decay on them"
    learn = quiet(synth_learner(n_trn=2, cbs=BreakSymmetry(verbose=False)))
    lin = nn.Linear(1, 4); learn.model = nn.Sequential(lin, nn.ReLU(), nn.Linear(4, 1)); learn.create_opt()
    learn.loss_func = lambda p, y: ((p.squeeze(-1) - y) ** 2).mean()
    assert learn.opt.state[lin.bias]['do_wd'] is False
    with torch.no_grad(): lin.weight.zero_(); lin.bias.zero_()
    learn.fit(1)
    assert list(learn.break_symmetry.report['was']) == ['zero'] and learn.opt.state[lin.bias].get('do_wd') is False

def test_lsuv_init_callback_reads_n_inp():
    "One input, two targets (dls.n_inp = 1): LSUVInit gives the model the one input, as fastai's loop does"
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    x = torch.randn(64, 4); y1, y2 = torch.randn(64), torch.randn(64)
    dls = DataLoaders(DataLoader(list(zip(x, y1, y2)), bs=16), DataLoader(list(zip(x, y1, y2)), bs=16)); dls.n_inp = 1
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    learn = quiet(Learner(dls, m, loss_func=lambda p, a, b: ((p[:, 0] - a) ** 2 + (p[:, 1] - b) ** 2).mean(), cbs=LSUVInit(verbose=False)))
    learn.fit(1)
    assert (learn.lsuv_init.report.status == 'ok').all()

def test_lsuv_skipped_layer_keeps_its_weights():
    "A layer whose output is not finite is reported skipped, and left as it was (not orthogonal and unscaled)"
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)); w0 = [p.detach().clone() for p in m.parameters()]
    x = torch.randn(16, 4); x[3, 1] = float('nan')
    r = lsuv_init(m, x)
    assert set(r.status) == {'non-finite output: skipped'} and all(torch.equal(p, q) for p, q in zip(m.parameters(), w0))

@pytest.mark.parametrize('bad', ['_l0', '_l1', '_l0_reverse'])
def test_break_symmetry_every_rnn_layer_and_only_the_bad_one(bad):
    "A zero layer of a 2-layer bidirectional LSTM, whichever it is, is found and re-initialized alone"
    torch.manual_seed(0)
    rnn = nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    with torch.no_grad():
        for k in ('weight_ih', 'weight_hh', 'bias_ih', 'bias_hh'): getattr(rnn, k + bad).zero_()
    keep = {n: p.detach().clone() for n, p in rnn.named_parameters()}
    rep = break_symmetry(nn.Sequential(rnn))
    assert rep.was.tolist() == ['zero']
    for n, p in rnn.named_parameters():
        assert torch.equal(p, keep[n]) == (not n.endswith(bad)), n  # the bad layer changed, every other is bit-identical
    assert len(break_symmetry(nn.Sequential(rnn))) == 0

# Twins their gradients tell apart: given a batch, only units that get equal gradients too are symmetry
from hypothesis import given, settings, assume, strategies as st

def mlp3(act=nn.ReLU, ni=64):
    return nn.Sequential(nn.Linear(ni, 32), act(), nn.Linear(32, 32), act(), nn.Linear(32, 10))

def test_zero_output_layer_is_left_and_learns():
    "A zero-initialized output layer (each output gets its own gradient from the loss): BreakSymmetry leaves it, the fit learns"
    from fastai.metrics import accuracy
    torch.manual_seed(0)
    m = mlp3()
    with torch.no_grad(): m[4].weight.zero_(); m[4].bias.zero_()
    keep = {k: v.clone() for k, v in m.state_dict().items()}
    learn = digits_learner(m, BreakSymmetry(verbose=False)); learn.metrics = accuracy
    learn.fit(5, 1e-2)
    assert len(learn.break_symmetry.report) == 0  # (it re-initialized the head: 'zero, symmetry is never broken')
    assert learn.recorder.values[-1][-1] > 0.75  # (the default init's head: 0.87 on the same 256 digits and schedule)
    m2 = mlp3(); m2.load_state_dict(keep)
    assert (m2[4].weight == 0).all() and len(break_symmetry(m2, torch.randn(8, 64))) == 0 and (m2[4].weight == 0).all()
    assert list(break_symmetry(m2)['layer']) == ['4']  # from the weights alone it looks stuck

def test_zero_hidden_layer_is_still_fixed_given_a_batch():
    "Before a ReLU (slope 0 at 0), a zero layer gets no gradient: stuck, re-initialized; the all-zero MLP: every layer"
    x = torch.randn(16, 64)
    m = mlp3()
    with torch.no_grad(): m[2].weight.zero_(); m[2].bias.zero_()
    assert break_symmetry(m, x)[['layer', 'was']].values.tolist() == [['2', 'zero']] and m[2].weight.abs().sum() > 0
    z = mlp3()
    for p in z.parameters(): p.data.zero_()
    # (the output layer too: its input is zero, so its weights get no gradient, only its biases: the biases' do not count)
    assert break_symmetry(z, x)['layer'].tolist() == ['0', '2', '4']
    assert not check_init(z, x)['finding'].str.startswith(('zero', 'constant', 'symmetric')).any()

class FixupBlock(nn.Module):
    "A residual block whose branch ends in a zero-initialized conv (Fixup, Zhang et al. 2019)"
    def __init__(self, c):
        super().__init__(); self.c1, self.c2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        nn.init.zeros_(self.c2.weight); nn.init.zeros_(self.c2.bias)
    def forward(self, x): return torch.relu(x + self.c2(torch.relu(self.c1(x))))

def fixup_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), FixupBlock(8), FixupBlock(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

def test_fixup_residual_branch_zero_is_left():
    "Fixup (Zhang et al. 2019) zero-initializes the last layer of each residual branch: its units get different gradients"
    net = fixup_net()
    x = torch.randn(16, 1, 8, 8)
    assert check_init(net).set_index('layer').loc['2.c2', 'finding'].startswith('zero')
    assert check_init(net, x).set_index('layer').loc[['2.c2', '3.c2'], 'finding'].str.startswith('ok: zero').all()
    assert len(break_symmetry(net, x)) == 0 and (net[2].c2.weight == 0).all()

def test_gradient_test_leaves_no_trace():
    "The gradient test: no .grad, no running statistic, mode, hooks and the global random state as they were"
    from helpers import n_hooks
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).train()
    with torch.no_grad(): m[4].weight.zero_(); m[4].bias.zero_(); m[1].running_mean.fill_(3.)
    x = torch.randn(32, 8)
    bn, rng = {k: v.clone() for k, v in m[1].state_dict().items()}, torch.get_rng_state()
    ci = check_init(m, x)
    assert ci.set_index('layer').loc['4', 'finding'].startswith('zero')  # before a ReLU: stuck
    assert all(p.grad is None for p in m.parameters()) and m.training and m[3].training and n_hooks(m) == 0
    assert all(torch.equal(v, m[1].state_dict()[k]) for k, v in bn.items()) and torch.equal(torch.get_rng_state(), rng)

def test_rnn_hidden_units_are_twins_only_in_and_out():
    "An RNN's unit is a hidden unit (a row of every gate); twins need equal incoming, recurrent and outgoing weights"
    torch.manual_seed(0)
    for kind in (nn.LSTM, nn.GRU, nn.RNN):
        class S(nn.Module):
            def __init__(s): super().__init__(); s.rnn, s.out = kind(3, 8, batch_first=True), nn.Linear(8, 2)
            def forward(s, x): return s.out(s.rnn(x)[0])
        m, x = S(), torch.randn(4, 5, 3)
        with torch.no_grad():
            for n in ('weight_ih_l0', 'weight_hh_l0', 'bias_ih_l0', 'bias_hh_l0'):
                w = getattr(m.rnn, n)
                for g in range(w.shape[0] // 8): w[g * 8 + 1] = w[g * 8]  # hidden unit 1 = unit 0, in every gate
        f = lambda xb=None: check_init(m, xb).finding[0]
        assert f().startswith('symmetric: 1 units') and not f(x).startswith('symmetric'), kind  # its outgoing weights differ
        with torch.no_grad(): m.rnn.weight_hh_l0[:, 1] = m.rnn.weight_hh_l0[:, 0]; m.out.weight[:, 1] = m.out.weight[:, 0]
        assert f(x).startswith('symmetric: 1 units'), kind
        assert break_symmetry(m, x)[['was', 'units']].values.tolist() == [['symmetric', 8]]

@settings(max_examples=25, deadline=None)
@given(st.integers(0, 1), st.sampled_from([nn.ReLU, nn.Tanh, nn.GELU]), st.integers(0, 31), st.integers(1, 31), st.booleans())
def test_a_twin_is_found_iff_it_is_one_in_and_out(layer, act, a, d, out_too):
    "Copy hidden unit `a` onto unit `a+d` of a random MLP: a finding given a batch iff its outgoing weights are copied too"
    torch.manual_seed(a * 31 + d)
    m, b = mlp3(act, ni=16), (a + d) % 32
    l, nxt = m[2 * layer], m[2 * layer + 2]
    with torch.no_grad():
        l.weight[b] = l.weight[a]; l.bias[b] = l.bias[a]
        if out_too: nxt.weight[:, b] = nxt.weight[:, a]
    x = torch.randn(16, 16)
    with torch.no_grad(): live = act is not nn.ReLU or (m[:2 * layer + 1](x)[:, a] > 0).any()
    assume(live)  # (a ReLU unit off on every example gets no gradient: no evidence, its weights decide)
    row = check_init(m, x).set_index('layer').loc[str(2 * layer)]
    assert row['finding'].startswith('symmetric') == out_too and row['duplicate_units'] == int(out_too), row['finding']
    assert check_init(m).set_index('layer').loc[str(2 * layer), 'duplicate_units'] == 1  # from the weights alone: always

def test_zeros_of_a_broken_init_all_go():
    "All-zero sigmoid MLP: the output layer's weights get different gradients (its input is 0.5), but other layers are stuck: it goes too"
    x = torch.randn(16, 64)
    z = mlp3(nn.Sigmoid)
    for p in z.parameters(): p.data.zero_()
    assert check_init(z, x).finding[2] == "zero: its units' weights get different gradients, but other layers are stuck (an init broken as a whole)"
    assert break_symmetry(z, x)['layer'].tolist() == ['0', '2', '4']  # its own units are told apart, but the init is broken as a whole
    h = mlp3(nn.Sigmoid)
    with torch.no_grad(): h[4].weight.zero_()
    assert len(break_symmetry(h, x)) == 0 and (h[4].weight == 0).all()  # alone: a deliberate zero init, left

def test_a_zero_chain_is_followed():
    "Fixup as published (zero classifier too): the branches get no gradient until the classifier moves; the probe steps it and looks again"
    net = fixup_net()
    nn.init.zeros_(net[6].weight); nn.init.zeros_(net[6].bias)
    keep = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(16, 1, 8, 8)
    assert check_init(net, x).set_index('layer').loc[['2.c2', '3.c2', '6'], 'finding'].str.startswith('ok: zero').all()
    assert len(break_symmetry(net, x)) == 0
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in keep.items())  # (the probe's steps undone: bit-identical)

def test_twins_among_a_zero_layer_whoever_comes_first():
    "Units 1 and 2 of a zero layer alike in and out, unit 0 not: 1 and 2 are twins (they were compared with unit 0 only)"
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    with torch.no_grad(): m[0].weight.zero_(); m[0].bias.zero_(); m[2].weight[:, 2] = m[2].weight[:, 1]
    x = torch.randn(16, 4)
    ci = check_init(m, x)
    assert ci.finding[0].startswith('zero') and ci.duplicate_units[0] == 1
    assert break_symmetry(m, x)[['layer', 'was']].values.tolist() == [['0', 'zero']]

def test_rnn_reinitialized_with_a_broken_init():
    "A zero LSTM told apart by its head, in a model with a stuck layer: reported re-initialized, and it was (it was left zero)"
    class M(nn.Module):
        def __init__(s):
            super().__init__(); s.rnn, s.head, s.l1, s.l2 = nn.LSTM(3, 8, batch_first=True), nn.Linear(8, 2), nn.Linear(3, 8), nn.Linear(8, 2)
        def forward(s, x): return s.head(s.rnn(x)[0][:, -1]) + s.l2(torch.relu(s.l1(x[:, -1])))
    torch.manual_seed(0)
    m, x = M(), torch.randn(4, 5, 3)
    with torch.no_grad():
        for p in m.rnn.parameters(): p.zero_()
        m.l1.weight.zero_(); m.l1.bias.zero_()
    assert sorted(break_symmetry(m, x)['layer']) == ['l1', 'rnn']
    assert all((p != 0).any() for p in m.rnn.parameters())

def test_embedding_units_are_its_features():
    "An embedding's units are its output features: a zero embedding ahead of a random layer learns (each token's row moves when it is looked up)"
    torch.manual_seed(0)
    m = nn.Sequential(nn.Embedding(100, 6, padding_idx=0), nn.Flatten(), nn.Linear(12, 3))
    with torch.no_grad(): m[0].weight.zero_()
    x = torch.randint(0, 10, (16, 2))
    assert check_init(m).finding[0].startswith('zero') and check_init(m).duplicate_units[0] == 5  # (6 features, one distinct)
    assert check_init(m, x).finding[0].startswith('ok: zero') and len(break_symmetry(m, x)) == 0
    with torch.no_grad(): m[0].weight.normal_(); m[0].weight[:, 4] = m[0].weight[:, 1]; m[2].weight[:, [4, 10]] = m[2].weight[:, [1, 7]]
    assert check_init(m, x).finding[0] == 'symmetric: 1 units duplicate another'  # feature 4 copies feature 1, in and out

def test_every_output_is_projected():
    "A model returning (features, logits) with a zero head: the head's gradient comes from the logits, not only the first output"
    class M(nn.Module):
        def __init__(s):
            super().__init__(); s.body, s.head = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16)), nn.Linear(16, 3)
            nn.init.zeros_(s.head.weight)
        def forward(s, x): f = s.body(x); return f, {'logits': s.head(f)}
    torch.manual_seed(0)
    assert check_init(M(), torch.randn(8, 4)).set_index('layer').loc['head', 'finding'].startswith('ok: zero')

def test_parametrized_weight_falls_back_to_the_weights():
    "weight_norm with a zero gain: its weight is computed, no parameter, and has no gradient entry (KeyError): the weights decide"
    from torch.nn.utils.parametrizations import weight_norm
    torch.manual_seed(0)
    lin = weight_norm(nn.Linear(8, 8))
    with torch.no_grad(): lin.parametrizations.weight.original0.zero_()
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), lin, nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(16, 4)
    assert check_init(m, x).finding[1].startswith('zero: every unit') and list(break_symmetry(m, x)['layer']) == ['2']

def test_break_symmetry_keeps_the_batch_order():
    "The probe's batch is the validation set's: reading the training set's moved its shuffle, and a seeded run changed"
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.torch_core import set_seed
    from helpers import BatchOrder
    ds = [(torch.randn(4), torch.tensor(i)) for i in range(64)]
    def run(cbs):
        set_seed(0)
        dls = DataLoaders(DataLoader(ds, bs=16, shuffle=True), DataLoader(ds, bs=16))
        m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 64)); nn.init.zeros_(m[2].weight)
        o = BatchOrder(); learn = quiet(Learner(dls, m, nn.functional.cross_entropy, cbs=[o, *cbs])); learn.fit(1, 1e-3)
        return o.ys
    assert run([BreakSymmetry(verbose=False)]) == run([])

def test_verdicts_read_the_weights_as_they_were():
    "Later passes judge a layer by its weights before the probe's steps: a truly stuck zero layer ('a') was reported 'symmetric' and half re-initialized"
    class M(nn.Module):
        def __init__(s): super().__init__(); s.l1, s.l2, s.a, s.b = nn.Linear(4, 8), nn.Linear(8, 3), nn.Linear(4, 6), nn.Linear(6, 3)
        def forward(s, x): return s.l2(s.l1(x)) + s.b(s.a(x))
    torch.manual_seed(0); m = M()
    with torch.no_grad():
        m.l1.weight.zero_(); m.l1.bias.uniform_(0.1, 1); m.l2.weight.fill_(0.1)  # (l1: equal, nonzero gradients until l2 moves)
        m.a.weight.zero_(); m.a.bias.zero_(); m.b.weight.fill_(0.1)  # (a, b: stuck)
    x = torch.randn(16, 4)
    ci = check_init(m, x).set_index('layer')['finding']
    assert ci['a'].startswith('zero: every unit') and ci['l1'].startswith('zero: ')
    rep = break_symmetry(m, x).set_index('layer')
    assert rep.loc['a', 'was'] == 'zero' and rep.loc['a', 'units_reinitialized'] == 6
    assert duplicate_units(m.a.weight, m.a.bias) == [] and (m.l1.weight != 0).any()

@pytest.mark.parametrize('bs', [2, 4, 16])
def test_units_idle_on_the_batch_are_no_twins(bs):
    "A deliberate zero branch (out = relu(x + Z(...))): units inactive on every example have zero gradient rows, no twins of each other"
    class Res(nn.Module):
        def __init__(s):
            super().__init__(); s.inp, s.L, s.Z, s.head = nn.Linear(16, 64), nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 10)
            nn.init.zeros_(s.Z.weight); nn.init.zeros_(s.Z.bias)
        def forward(s, x): x = torch.relu(s.inp(x)); return s.head(torch.relu(x + s.Z(torch.relu(s.L(x)))))
    for seed in range(5):
        torch.manual_seed(seed); m = Res()
        assert len(break_symmetry(m, torch.randn(bs, 16))) == 0, seed

@pytest.mark.parametrize('classes,bs', [(1000, 1), (20000, 2)])
def test_rank_one_gradients_are_no_twins(classes, bs):
    "A zero head on a batch of one: its gradient rows are multiples of one vector, a few near-equal by accident (16 of 1000 were twins)"
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, classes)); nn.init.zeros_(m[2].weight)
    assert check_init(m, torch.randn(bs, 8)).finding[1].startswith('ok: zero')

def test_probe_leaves_a_graph_and_the_inputs_alone():
    "check_init(m, xb) steps weights through `.data` (a caller's graph stays valid); a batch with non-tensors or a dict is read as given"
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)); nn.init.zeros_(m[2].weight)
    x = torch.randn(16, 4)
    loss = m(x).pow(2).sum()
    check_init(m, x)
    loss.backward()  # (it raised: "modified by an inplace operation")
    class Two(nn.Module):
        def __init__(s): super().__init__(); s.m = m
        def forward(s, x, extra=None): return s.m(x['x'] if isinstance(x, dict) else x)
    for xb in ((x, None), (x, 3), {'x': x}):
        assert check_init(Two(), xb).finding[1].startswith('ok: zero'), xb

def test_seeded_run_unchanged_by_the_probe_batch():
    "Reading the validation batch draws a seed from torch's global generator (PyTorch's DataLoader): with dropout the run changed"
    from fastai.torch_core import set_seed
    def run(cbs):
        set_seed(0)
        m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10)); nn.init.zeros_(m[3].weight)
        learn = digits_learner(m, cbs); learn.fit(1, 1e-3)
        return torch.cat([p.detach().flatten() for p in m.parameters()])
    assert torch.equal(run([BreakSymmetry(verbose=False)]), run([]))

def test_embedding_feature_twin_alone_and_padding_kept():
    "A duplicated embedding feature: its column re-initialized, the other features and the padding row (zero) kept"
    torch.manual_seed(0)
    m = nn.Sequential(nn.Embedding(10, 6, padding_idx=0), nn.Flatten(), nn.Linear(12, 3))
    with torch.no_grad(): m[0].weight[:, 4] = m[0].weight[:, 1]; m[2].weight[:, [4, 10]] = m[2].weight[:, [1, 7]]
    keep = m[0].weight.detach().clone()
    assert break_symmetry(m, torch.randint(0, 10, (16, 2)))[['was', 'units_reinitialized']].values.tolist() == [['symmetric', 1]]
    w = m[0].weight
    assert torch.equal(w[:, [0, 1, 2, 3, 5]], keep[:, [0, 1, 2, 3, 5]]) and not torch.equal(w[1:, 4], keep[1:, 4]) and (w[0] == 0).all()

def test_unused_layer_does_not_break_the_init():
    "A zero layer the pass never uses (no gradient) and a copied unit elsewhere: not 'an init broken as a whole', LoRA's B stays zero"
    class M(nn.Module):
        def __init__(s):
            super().__init__(); s.A, s.B, s.extra, s.mid = nn.Linear(8, 2, bias=False), nn.Linear(2, 8, bias=False), nn.Linear(8, 8), nn.Linear(8, 8)
            nn.init.zeros_(s.B.weight); nn.init.zeros_(s.extra.weight)
            with torch.no_grad(): s.mid.weight[1] = s.mid.weight[0]; s.mid.bias[1] = s.mid.bias[0]
        def forward(s, x): return s.mid(x + s.B(s.A(x)))
    torch.manual_seed(0); m = M()
    assert 'B' not in set(break_symmetry(m, torch.randn(16, 8))['layer']) and (m.B.weight == 0).all()

def test_named_tuple_and_dict_batches():
    "A batch given as a namedtuple (fastai's to_device rebuilt it with one argument) or with dict inputs (BreakSymmetry's fit raised AttributeError)"
    from collections import namedtuple
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    class M(nn.Module):
        def __init__(s): super().__init__(); s.l, s.h = nn.Linear(4, 8), nn.Linear(8, 2); nn.init.zeros_(s.h.weight)
        def forward(s, d, e=None): return s.h(torch.relu(s.l(d['x'] if isinstance(d, dict) else d)))
    B = namedtuple('B', 'a b')
    torch.manual_seed(0)
    assert len(break_symmetry(M(), B(torch.randn(8, 4), torch.randn(8, 4)))) == 0
    ds = [({'x': torch.randn(4)}, torch.tensor(i % 2)) for i in range(32)]
    learn = quiet(Learner(DataLoaders(DataLoader(ds, bs=8), DataLoader(ds, bs=8)), M(), loss_func=nn.CrossEntropyLoss(), cbs=BreakSymmetry(verbose=False)))
    learn.fit(1)
    assert len(learn.break_symmetry.report) == 0

def test_embedding_feature_reinit_at_the_tables_scale():
    "A re-initialized embedding feature is drawn at the other features' scale (it was N(0, 1) in a 0.01 table: 93x)"
    torch.manual_seed(0)
    m = nn.Sequential(nn.Embedding(10, 8, padding_idx=0), nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        m[0].weight.normal_(0, 0.01); m[0].weight[0] = 0.
        m[0].weight[:, 5] = m[0].weight[:, 2]; m[2].weight[:, [5, 13]] = m[2].weight[:, [2, 10]]
    assert break_symmetry(m, torch.randint(1, 10, (16, 2)))['units_reinitialized'].tolist() == [1]
    assert 0.5 < m[0].weight[1:, 5].std() / m[0].weight[1:, [0, 1, 3, 4, 6, 7]].std() < 2 and (m[0].weight[0] == 0).all()

def test_lsuv_init_reading_the_training_set_leaves_its_shuffle():
    "LSUVInit reads the training DataLoader's first batch; the fit then sees the batches it would have seen without it"
    import random
    from fastai.learner import Learner
    from initcb.core import digits_dls
    from initcb.init import LSUVInit
    from helpers import BatchOrder
    seen = []
    for cbs in ([], [LSUVInit(verbose=False)]):
        torch.manual_seed(0); random.seed(0)
        o = BatchOrder()
        learn = quiet(Learner(digits_dls(bs=32, n_train=128), nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), cbs=cbs + [o]))
        learn.fit(2, 1e-3)
        seen.append(o.ys)
    assert seen[0] == seen[1]

def test_embedding_bag_is_an_embedding():
    "nn.EmbeddingBag (a bag of tokens summed): checked and re-initialized like an embedding, its units its output features (it was not checked at all)"
    torch.manual_seed(0)
    m = nn.Sequential(nn.EmbeddingBag(10, 6, mode='sum', padding_idx=0), nn.Linear(6, 3))
    x = torch.randint(0, 10, (16, 3))
    with torch.no_grad(): m[0].weight.zero_()
    assert check_init(m).finding[0].startswith('zero') and check_init(m, x).finding[0].startswith('ok: zero') and len(break_symmetry(m, x)) == 0
    with torch.no_grad(): m[0].weight.normal_(); m[0].weight[0] = 0.; m[0].weight[:, 4] = m[0].weight[:, 1]; m[1].weight[:, 4] = m[1].weight[:, 1]
    keep = m[0].weight.detach().clone()
    assert check_init(m, x).finding[0] == 'symmetric: 1 units duplicate another'
    assert break_symmetry(m, x)[['layer', 'was', 'units_reinitialized']].values.tolist() == [['0', 'symmetric', 1]]
    w = m[0].weight
    assert torch.equal(w[:, [0, 1, 2, 3, 5]], keep[:, [0, 1, 2, 3, 5]]) and not torch.equal(w[1:, 4], keep[1:, 4]) and (w[0] == 0).all()

def test_dataclass_output_is_projected():
    "A model returning a dataclass (features, logits) with a zero head: its fields are outputs too (it was 'no output', the weights decided: 'zero')"
    import dataclasses
    @dataclasses.dataclass
    class Out:
        features: torch.Tensor
        logits: torch.Tensor
    class M(nn.Module):
        def __init__(s):
            super().__init__(); s.body, s.head = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16)), nn.Linear(16, 3)
            nn.init.zeros_(s.head.weight)
        def forward(s, x): f = s.body(x); return Out(f.detach(), s.head(f))
    torch.manual_seed(0)
    assert check_init(M(), torch.randn(8, 4)).set_index('layer').loc['head', 'finding'].startswith('ok: zero')
    assert len(break_symmetry(M(), torch.randn(8, 4))) == 0

def test_shared_activation_module_follows_every_block():
    "fastai's TabularModel registers one ReLU in every block: only the first block's layer had it (gain 1 for the rest, and check_init said 'ok' at 0.41x)"
    from fastai.tabular.model import TabularModel
    from initcb.init import following_activation, check_init
    m = TabularModel(emb_szs=[(4, 3)], n_cont=2, out_sz=2, layers=[200, 100, 50])
    fa = following_activation(m)
    assert all(isinstance(fa[f'layers.{i}.0'], nn.ReLU) for i in range(3)) and fa['layers.3.0'] is None, fa
    ci = check_init(m).set_index('layer')
    assert all(ci.loc[f'layers.{i}.0', 'finding'].startswith('ok: scale 0.4') for i in range(3)), ci  # (ReLU's gain found: 0.41x; the BatchNorm after it sets the scale again)

def test_lsuv_scales_without_dropout():
    "lsuv_init measured with dropout on: each layer after a Dropout(0.5) came out sqrt(0.5) small at inference (0.71, then 0.45)"
    from initcb.init import lsuv_init, output_stds
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 8))
    xb = torch.randn(256, 32)
    lsuv_init(m, xb)
    assert m.training and all(mm.training for mm in m.modules())  # (modes as they were)
    stds = output_stds(m, xb)
    assert all(abs(s - 1) < 0.15 for n, s in stds.items() if n in ('0', '3', '6')), stds

def test_plain_functions_check_their_arguments():
    "init_weights(zero_bias='no') zeroed the biases; lsuv_init(centre='yes') ran; lsuv_init(model, None) failed inside F.linear; reinit_units(units=[-1]) took the last unit"
    from initcb.init import lsuv_init
    from initcb.reinit import reinit_units, unit_chains
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    bad_argument_named(lambda **k: init_weights(m, **k), dict(zero_bias='no'))
    bad_argument_named(lambda **k: lsuv_init(m, torch.randn(4, 8), **k), dict(centre='yes'))
    bad_argument_named(lambda **k: lsuv_init(m, **k), dict(xb=None))
    ch = unit_chains(m)['0'][0]
    for units in ([-1], [16], [1.5], [True]): bad_argument_named(lambda **k: reinit_units(m, '0', chain=ch, **k), dict(units=units))
    reinit_units(m, '0', [0, 15], ch)  # (in range: fine)

@pytest.mark.parametrize('how', ['torch.compile', 'Module.compile'])
def test_compiled_model_checked_and_initialized_as_eager(how):
    "check_init's twin test keeps its graph for a second backward pass, which a compiled backward refuses: it runs eagerly (`run_eagerly`);"
    "break_symmetry and lsuv_init on a compiled model give the eager model's result"
    import torch._dynamo
    torch._dynamo.reset()
    def mlp():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        with torch.no_grad(): m[2].weight.zero_(); m[2].bias.zero_()
        return m
    x = torch.randn(16, 4)
    res = []
    for h in (None, how):
        m = mlp()
        c = m if h is None else torch.compile(m) if h == 'torch.compile' else (m.compile() or m)
        c(x).sum().backward()  # (compiled and run once, as in a fit)
        rep = check_init(c, x)
        torch.manual_seed(1); break_symmetry(c, x); torch.manual_seed(2); lsuv_init(c, x)
        res.append((rep, [p.detach().clone() for p in m.parameters()]))
    (r0, p0), (r1, p1) = res
    assert r0.finding.str.startswith('zero').any() and list(r1.finding) == list(r0.finding), (r0, r1)
    for a, b in zip(p0, p1): torch.testing.assert_close(a, b)

def _param_mlp(kind):
    "Linear-ReLU-Linear-ReLU-Linear, the middle Linear's weight parametrized by `kind` ('wn', 'sn': torch.nn.utils.parametrizations; 'old_wn': the deprecated hook)"
    from torch.nn.utils.parametrizations import weight_norm, spectral_norm
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    if kind == 'wn': weight_norm(m[2])
    elif kind == 'sn': spectral_norm(m[2])
    elif kind == 'old_wn':
        with warnings.catch_warnings(): warnings.simplefilter('ignore'); nn.utils.weight_norm(m[2])
    return m

@pytest.mark.parametrize('kind', ['wn', 'sn', 'old_wn'])
def test_parametrized_weights_written_through_or_skipped(kind):
    "A parametrized weight is computed from its `original` tensors at every access: init_weights, break_symmetry and lsuv_init wrote into"
    "that copy, said they had changed the layer, and changed nothing. Now they set it through the parametrization, or skip it and say why"
    from initcb.core import select_modules
    from initcb.gradients import GradientHealth
    from initcb.reinit import unit_chains
    x, m = torch.randn(64, 8), _param_mlp(kind)
    w0 = m[2].weight.detach().clone()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); init_weights(m)
    if kind == 'old_wn': assert not torch.equal(m[0].weight, m[0].weight * 0) and torch.equal(m[2].weight, w0) and any('weight_norm' in str(x.message) for x in w)
    else:
        assert not torch.allclose(m[2].weight, w0)
        if kind == 'wn': assert abs(m[2].weight.std().item() / (math.sqrt(2) / 4) - 1) < 0.2  # (He's std for the ReLU after it, fan-in 16)
    m = _param_mlp(kind)
    if kind != 'old_wn':
        with writable(m[2]) as wt: wt.fill_(0.3)  # a constant layer, as the forward pass sees it
        const = lambda w: bool((w == w.flatten()[0]).all())  # (one read: spectral_norm's power iteration moves its weight at each, in training mode)
        assert const(m[2].weight)
        rep = break_symmetry(m, x)
        assert rep.layer.tolist() == ['2'] and not const(m[2].weight)
    rep = lsuv_init(_param_mlp(kind), x).set_index('layer')
    status = rep.loc['2', 'status']
    assert status == {'wn': 'ok', 'sn': 'its parametrization (SpectralNorm) sets its scale: skipped',
                      'old_wn': 'its weight is computed by a hook (torch.nn.utils.weight_norm / spectral_norm, deprecated): skipped'}[kind], status
    m = _param_mlp(kind)
    assert [n for n, _ in select_modules(m)] == ['0', '1', '2', '3', '4']  # (a parametrized Linear is watched: its parametrizations are its own)
    assert check_init(m).set_index('layer').loc['0', 'activation'] == 'ReLU'
    if kind != 'old_wn': assert unit_chains(m)['0'][1].startswith("2's weight is parametrized")  # (ReDo: plain weights only)
    learn = quiet(synth_learner(n_trn=4)); learn.model = nn.Sequential(nn.Linear(1, 8), m, nn.Linear(2, 1)); learn.add_cb(gh := GradientHealth(warn=False))
    learn.fit(1)
    assert gh.layers == ['0', '1.0', '1.2', '1.4', '2'], gh.layers  # (a parametrized weight's `original` tensors: its layer's)


def test_a_layer_a_norm_layer_follows_is_no_scale_finding():
    "fastai's TabularModel (Linear, ReLU, BatchNorm) at PyTorch's default init: every Linear was 'outputs shrink layer by layer', though the BatchNorm sets the scale again"
    from initcb.init import check_init
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 200), nn.ReLU(), nn.BatchNorm1d(200), nn.Linear(200, 100), nn.BatchNorm1d(100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 2))
    f = check_init(m).set_index('layer').finding
    assert f['0'].startswith('ok: scale') and f['3'].startswith('ok: scale') and 'norm layer after it' in f['0'], f
    assert f['6'].startswith('scale 0.4') and 'too small' in f['6'], f  # (no norm layer after it: the finding stays)

def test_lsuv_leaves_tied_weights():
    "A decoder tied to the embedding (AWD_LSTM's language model) or two Linears sharing a weight: rescaling one rescales the other;"
    "lsuv_init re-initialized the embedding (std 0.057 -> 1.92) and reported 'ok'. Now skipped, with why; the other layers done"
    from initcb.init import lsuv_init
    class Tied(nn.Module):
        def __init__(s):
            super().__init__(); s.emb, s.l, s.dec = nn.Embedding(50, 16), nn.Linear(16, 16), nn.Linear(16, 50); s.dec.weight = s.emb.weight
        def forward(s, x): return s.dec(torch.relu(s.l(s.emb(x))))
    class Pair(nn.Module):
        def __init__(s):
            super().__init__(); s.l1, s.l2, s.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2); s.l2.weight = s.l1.weight
        def forward(s, x): return s.out(s.l2(s.l1(x)))
    for m, xb, skipped in ((Tied(), torch.randint(0, 50, (32, 7)), {'dec'}), (Pair(), torch.randn(64, 8), {'l1', 'l2'})):
        torch.manual_seed(0)
        shared = {id(p): p.detach().clone() for n, p in m.named_parameters() if n.split('.')[0] in skipped | {'emb'}}
        rep = lsuv_init(m, xb).set_index('layer')
        assert {n for n in rep.index if 'shared with' in rep.status[n]} == skipped, rep
        assert all(torch.equal(p, shared[id(p)]) for p in m.parameters() if id(p) in shared)
        assert (rep.drop(index=list(skipped)).status == 'ok').all()

def test_a_tied_decoders_scale_finding_says_whose_weights_they_are():
    "A decoder tied to an N(0, 1) embedding read 'scale 5.7x too large' with nothing to say the weights are the embedding's (and that lsuv_init leaves them)"
    class LM(nn.Module):
        def __init__(s):
            super().__init__(); s.emb = nn.Embedding(100, 32); s.lin = nn.Linear(32, 32); s.dec = nn.Linear(32, 100); s.dec.weight = s.emb.weight
        def forward(s, x): return s.dec(torch.relu(s.lin(s.emb(x))))
    torch.manual_seed(0)
    ci = check_init(LM()).set_index('layer').finding
    assert ci['dec'].startswith('scale') and "its weights are emb's too (tied)" in ci['dec']
    assert 'tied' not in ci['lin'] and ci['emb'] == 'ok'

@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_lsuv_and_orthogonal_init_in_half_precision(dtype):
    "A float16/bfloat16 model: `nn.init.orthogonal_` has no QR kernel for them on a CPU ('geqrf_cpu' not implemented): lsuv_init and init_weights('orthogonal') crashed"
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).to(dtype)
    init_weights(m, 'orthogonal')
    assert m[0].weight.dtype == dtype and torch.allclose((m[2].weight.float() @ m[2].weight.float().T), torch.eye(10), atol=0.05)
    if dtype == torch.float16: return  # (float16 matmuls on a CPU: LSUV's forward needs bfloat16 there)
    r = lsuv_init(m, torch.randn(256, 64).to(dtype))
    assert (r.status == 'ok').all() and ((r['std'] - 1).abs() < 0.1).all(), r

def test_lsuv_on_a_lazy_model():
    "LazyBatchNorm: lsuv_init copied the buffers before the first forward pass made them ('Attempted to use an uninitialized parameter')"
    torch.manual_seed(0)
    m = nn.Sequential(nn.LazyConv2d(8, 3, padding=1), nn.LazyBatchNorm2d(), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    learn = quiet(Learner(digits_dls(bs=64, n_train=128), m, loss_func=nn.CrossEntropyLoss(), cbs=LSUVInit()))
    learn.fit(1)
    assert learn.lsuv_init.report.status.tolist() == ['ok', 'ok']

def test_reinitialized_layers_start_the_optimizer_afresh():
    "HealthCheck(remedy=True) kept the Adam state of the layers its symmetry remedy re-initialized (BreakSymmetry drops it), and, ordered"
    "first, left BreakSymmetry nothing to do; a Lookahead's (`ranger`) slow copy pulled a re-initialized layer halfway back. The action's epoch was the last fit's"
    from fastai.optimizer import ranger
    from initcb.report import HealthCheck
    class Peek(Callback):
        order = 99
        def before_batch(self):
            if self.training and self.iter == 0:
                self.st = dict(self.learn.opt.state.get(self.p, {}))
                self.slow = None if not hasattr(self.learn.opt, 'slow_weights') else torch.equal(self.learn.opt.slow_weights[0][2], self.p)
    for opt_func, cbs in ((None, lambda: [HealthCheck(remedy=True, report=False)]), (ranger, lambda: [BreakSymmetry(verbose=False)])):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
        kw = {} if opt_func is None else dict(opt_func=opt_func)
        learn = quiet(Learner(digits_dls(bs=64, flat=True, n_train=256), m, loss_func=nn.CrossEntropyLoss(), cbs=cbs(), **kw))
        learn.fit(1, 1e-2)
        with torch.no_grad(): m[2].weight.zero_(); m[2].bias.zero_()
        peek = Peek(); peek.p = m[2].weight
        learn.fit(1, 1e-3, cbs=peek)
        assert m[2].weight.std() > 0.01
        assert 'grad_avg' not in peek.st and 'sqr_avg' not in peek.st  # (dropped: made afresh by the first step)
        if opt_func is ranger: assert peek.slow  # (the slow copy is the new weights)
        else:
            a = learn.health_check.actions
            assert a[a.action == 'BreakSymmetry'][['epoch', 'batch']].values.tolist() == [[0, 4]]  # (the second fit's first batch: the first fit took 4)

def test_lsuv_callback_starts_the_optimizer_afresh():
    "LSUVInit added to a learner that had trained replaced the weights and kept Adam's state for them (grad_avg, sqr_avg, step);"
    "BreakSymmetry drops it. Now the layers it set start afresh; a layer it skipped (spectral_norm) keeps its state"
    from torch.nn.utils.parametrizations import spectral_norm
    class Peek(Callback):
        order = 99
        def before_batch(self):
            if self.training and self.iter == 0: self.st = {id(p): dict(self.learn.opt.state.get(p, {})) for p in self.learn.model.parameters()}
    torch.manual_seed(0)
    m = deep(3); spectral_norm(m[2])
    learn = digits_learner(m, [])
    learn.fit(1, 1e-3)
    assert all('grad_avg' in learn.opt.state[p] for p in m.parameters())
    learn.add_cb(LSUVInit(verbose=False)); peek = Peek()
    learn.fit(1, 1e-3, cbs=peek)
    st = learn.lsuv_init.report.set_index('layer').status
    assert st['2'].endswith('sets its scale: skipped') and (st.drop(index='2') == 'ok').all(), st
    for n, p in m.named_parameters():
        kept = n.startswith('2.')
        assert all((k in peek.st[id(p)]) == kept for k in ('grad_avg', 'sqr_avg', 'step')), (n, peek.st[id(p)].keys())

def test_lsuv_callback_initializes_each_model_it_meets_once():
    "A `done` flag: moved to another learner (after `remove_cb`), or given a new `learn.model`, LSUVInit did nothing, silently."
    "Now it initializes a model it has not initialized, and leaves one it did as it is"
    from initcb.init import learner_batch
    x = learner_batch(digits_learner(deep(), []))  # (the batch LSUVInit reads)
    def bad():
        m = deep()
        with torch.no_grad():
            for p in m.parameters(): p.mul_(0.1)  # (outputs shrink layer by layer)
        return m
    def at_unit_std(m): return all(abs(s - 1) <= 0.1 for s in output_stds(m, x).values())
    torch.manual_seed(0)
    cb = LSUVInit(verbose=False)
    m1 = bad(); learn = digits_learner(m1, cb); learn.fit(1, 0.)
    assert cb.done and at_unit_std(m1)
    w1 = [p.detach().clone() for p in m1.parameters()]
    learn.model = m2 = bad(); learn.create_opt()
    assert not cb.done
    learn.fit(1, 0.)
    assert cb.done and at_unit_std(m2) and (cb.report.status == 'ok').all()  # (the new model on the same learner)
    learn.remove_cb(cb)
    l2 = digits_learner(m3 := bad(), cb); l2.fit(1, 0.)
    assert at_unit_std(m3)  # (another learner)
    l2.remove_cb(cb)
    with torch.no_grad(): m1[0].weight.mul_(3)  # (its trained weights, say: left as they are)
    w1[0] = m1[0].weight.detach().clone()
    l3 = digits_learner(m1, cb); l3.fit(1, 0.)
    assert all(torch.equal(a, b) for a, b in zip(w1, m1.parameters()))
    l3.model = m4 = bad(); l3.create_opt(); cb.done = True  # (a model loaded with trained weights: counts as done)
    w4 = [p.detach().clone() for p in m4.parameters()]
    l3.fit(1, 0.)
    assert all(torch.equal(a, b) for a, b in zip(w4, m4.parameters()))
    import pickle
    d = cb.__getstate__(); d.pop('_did'); d['done'] = True  # (a learner exported with a bare flag, before models were tracked)
    old = LSUVInit.__new__(LSUVInit); old.__setstate__(d)
    assert old.done and list(old._did) == [m4]
    back = pickle.loads(pickle.dumps(l3))
    assert back.lsuv_init.done and list(back.lsuv_init._did) == [back.model]  # (the learner's model alone)

def test_lsuv_puts_every_weight_back_on_an_error():
    "A forward that failed at its 4th call left the layers before rescaled and one orthogonal at unit scale (only the buffers were put back),"
    "and blamed `xb`, which had run through the model. Now every weight is as it was, and the error names `model`"
    class Flaky(nn.Module):
        def __init__(s): super().__init__(); s.l, s.n = deep(3, 8), 0
        def forward(s, x):
            s.n += 1
            if s.n == 4: raise RuntimeError('boom')
            return s.l(x)
    torch.manual_seed(0)
    m = Flaky(); w0 = [p.detach().clone() for p in m.parameters()]
    with pytest.raises(ValueError) as e: lsuv_init(m, torch.randn(16, 8))
    assert '`model`' in str(e.value) and '`xb`' not in str(e.value) and 'boom' in str(e.value), str(e.value)
    assert all(torch.equal(a, b) for a, b in zip(w0, m.parameters()))

def test_lsuv_callback_names_dl_for_a_batch_the_model_cannot_take():
    "LSUVInit(dl=[1]) failed at the fit naming `xb`, an argument the user never gave: now `dl`, the one they gave (or left None)"
    for dl in ([1], None):
        learn = digits_learner(deep(), LSUVInit(dl=dl, verbose=False))
        if dl is None: learn.model = nn.Sequential(nn.Linear(3, 2))  # (the learner's own batch does not fit it)
        w0 = [p.detach().clone() for p in learn.model.parameters()]
        with pytest.raises(ValueError) as e: learn.fit(1)
        assert '`dl`' in str(e.value) and '`xb`' not in str(e.value), str(e.value)
        assert all(torch.equal(a, b) for a, b in zip(w0, learn.model.parameters()))

def test_init_weights_leaves_frozen_and_tied_layers():
    "After learn.freeze(), init_weights re-initialized the frozen pretrained body; it rewrote an embedding tied to an output Linear"
    "at the Linear's scale. Now both are left as they are, and a warning says so (as lsuv_init, break_symmetry and ReinitDormant leave them)"
    from fastai.torch_core import params
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(64, 50), nn.ReLU(), nn.Linear(50, 50), nn.ReLU(), nn.Linear(50, 10))
    learn = Learner(digits_dls(flat=True, n_train=64), head, loss_func=nn.CrossEntropyLoss(), splitter=lambda m: [params(m[:4]), params(m[4:])])
    learn.freeze()
    body, w4 = {k: v.clone() for k, v in head[:4].state_dict().items()}, head[4].weight.detach().clone()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); init_weights(learn.model)
    assert all(torch.equal(v, head[:4].state_dict()[k]) for k, v in body.items()) and not torch.equal(w4, head[4].weight)
    msg = ' '.join(str(x.message) for x in w)
    assert 'init_weights skips 2 layers: 0, 2: frozen' in msg, msg
    class LM(nn.Module):
        def __init__(s):
            super().__init__(); s.emb, s.lin, s.dec = nn.Embedding(100, 32), nn.Linear(32, 32), nn.Linear(32, 100); s.dec.weight = s.emb.weight
        def forward(s, x): return s.dec(torch.relu(s.lin(s.emb(x))))
    lm = LM(); e0, l0 = lm.emb.weight.detach().clone(), lm.lin.weight.detach().clone()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); init_weights(lm)
    assert torch.equal(lm.emb.weight, e0) and not torch.equal(lm.lin.weight, l0)
    msg = ' '.join(str(x.message) for x in w)
    assert 'dec: its weights are shared with emb (tied)' in msg, msg

def test_a_parametrization_that_cannot_take_the_weight_is_skipped():
    "A weight computed as exp(V) (its right_inverse a log): init_weights left NaN in it, break_symmetry on a constant one said"
    "'re-initialized' and left NaN, silently; a parametrization with no right_inverse crashed init_weights and lsuv_init after layer 0 was"
    "already set. Now such a layer is put back as it was and skipped with a warning naming it; the other layers are done"
    from torch.nn.utils import parametrize
    class Exp(nn.Module):
        def forward(self, V): return torch.exp(V)
        def right_inverse(self, W): return torch.log(W)
    class Double(nn.Module):  # (no right_inverse)
        def forward(self, V): return 2 * V
    def net(p, fill=None):
        m = deep(2, 16)
        with torch.no_grad():
            if fill is None: m[2].weight.abs_()  # (positive: exp's log can take it)
            else: m[2].weight.fill_(fill)
        parametrize.register_parametrization(m[2], 'weight', p()); return m
    def run(f, m):
        ps = [p.detach().clone() for p in m.parameters()]
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always'); out = f(m)
        assert all(torch.isfinite(p).all() for p in m.parameters()) and torch.isfinite(m[2].weight).all()
        assert all(torch.equal(a, b) for a, b in zip(ps[2:4], list(m.parameters())[2:4]))  # (layer 2: bias and `original` as they were)
        assert not torch.equal(ps[0], m[0].weight)  # (layer 0: done)
        msg = ' '.join(str(x.message) for x in w)
        assert ' 2: its parametrization (' in msg and 'cannot take' in msg, msg
        return out
    torch.manual_seed(0)
    x = torch.randn(32, 16)
    for p in (Exp, Double):
        run(init_weights, net(p))
        rep = run(lambda m: lsuv_init(m, x), net(p)).set_index('layer')
        assert rep.status['2'].startswith('its parametrization (') and rep.status['2'].endswith(': skipped') and rep.status['0'] == 'ok', rep
    m = net(Exp, 0.3)
    with torch.no_grad(): m[0].weight.zero_()  # (a zero layer, re-initialized beside it)
    rep = run(lambda m: break_symmetry(m, x), m)
    assert rep.layer.tolist() == ['0'], rep


def test_a_constant_layer_told_apart_is_still_reinitialized():
    "A Conv2d of 0.05s between random layers: its units get different gradients from the layers after it, so `check_init` called it"
    "'ok: ... a deliberate init' and BreakSymmetry left it; it reached 0.63 accuracy in 10 epochs where PyTorch's init reached 0.88"
    from initcb.init import _SLOW
    from initcb.report import _init_rules, Thresholds
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    with torch.no_grad(): m[2].weight.fill_(0.05)
    xb = torch.randn(8, 1, 8, 8)
    ci = check_init(m, xb).set_index('layer')
    assert ci.loc['2', 'finding'] == _SLOW, ci
    f = [r for r in _init_rules(m, Thresholds(), lambda: xb) if r['layer'] == '2']
    assert [(r['problem'], r['severity'], r['callback']) for r in f] == [('constant units: they start identical', 'warning', 'BreakSymmetry')], f
    rep = break_symmetry(m, xb)
    assert rep.layer.tolist() == ['2'] and m[2].weight.std() > 0.01
    z = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)); nn.init.zeros_(z[2].weight)  # (a zero output layer: deliberate, left)
    assert not len(break_symmetry(z, torch.randn(8, 4))) and (z[2].weight == 0).all()


def test_lsuv_done_set_before_the_callback_is_on_a_learner():
    "`LSUVInit().done = True` before `add_cb` (a learner loaded with trained weights) raised a ValueError: the model it meets first counts as done"
    import warnings
    cb = LSUVInit(verbose=False); cb.done = True
    learn = synth_learner(n_trn=2, cbs=cb)
    w = learn.model.a.detach().clone()
    with warnings.catch_warnings(): warnings.simplefilter('ignore'); learn.fit(1, 0.)
    assert cb.done and cb.report is None and torch.equal(learn.model.a, w)
