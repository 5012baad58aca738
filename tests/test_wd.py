"AdaptiveWD: λ stays finite and within bounds whatever the gradients do; bad arguments are named."
import math, warnings, numpy as np, pytest, torch
from torch import nn
from fastai.test_utils import synth_learner
from fastai.callback.core import Callback, CancelStepException, CancelBatchException
from fastai.learner import Learner
from fastai.optimizer import SGD
from initcb.core import digits_dls
from initcb.wd import AdaptiveWD, MODES
from helpers import quiet, bad_argument_named

class Poison(Callback):
    "Makes the gradients non-finite (or zero) at some batches, before AdaptiveWD reads them"
    order = AdaptiveWD.order - 0.1
    def __init__(self, how): self.how = how
    def before_step(self):
        if self.train_iter % 2 == 0:
            for p in self.model.parameters():
                if p.grad is not None: p.grad.fill_(float('nan') if self.how == 'nan' else 0.)

@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('how', ['nan', 'zero'])
def test_lambda_finite_and_bounded(mode, how):
    cb = AdaptiveWD(mode, wd_max=0.2)
    learn = quiet(synth_learner(n_trn=4, cbs=[cb, Poison(how)]))
    learn.fit(1, lr=1e-2, wd=0.1)
    lam = cb.wd_df().drop(columns='batch').to_numpy()
    assert np.isfinite(lam).all() and (lam >= 0).all() and (lam <= 0.2).all()
    assert learn.opt.hypers[0]['wd'] == 0.1  # the fit's value is back
    if mode == 'awd': assert len(cb.events) > 0  # the bad batches were recorded

@pytest.mark.parametrize('kw', [dict(mode='l2'), dict(wd_max=-1.), dict(beta=2.), dict(every=0), dict(bound=0.5), dict(gain=-1.)])
def test_bad_arguments(kw): bad_argument_named(AdaptiveWD, kw)

def test_exception_mid_step_restores_wd():
    class Boom(Callback):
        order = AdaptiveWD.order + 0.1
        def before_step(self):
            if self.train_iter == 2: raise RuntimeError('boom')
    cb = AdaptiveWD('cautious')
    learn = quiet(synth_learner(n_trn=4, cbs=[cb, Boom()]))
    with pytest.raises(RuntimeError): learn.fit(1, lr=1e-2, wd=0.1)
    assert learn.opt.hypers[0]['wd'] == 0.1

@pytest.mark.parametrize('mode,event', [('cautious', 'after_step'), ('equilibrium', 'before_step')])
def test_exception_mid_step_keeps_no_tensor(mode, event):
    "A fit ended mid-step kept tensors until the next batch, pickled by `learn.export`: 'cautious' what its decay took (weight-sized), 'equilibrium' its copy of the weights"
    class Boom(Callback):
        order = AdaptiveWD.order + 0.1
        def boom(self):
            if self.train_iter == 2: raise RuntimeError('boom')
    setattr(Boom, event, Boom.boom)
    cb = AdaptiveWD(mode, every=1) if mode == 'equilibrium' else AdaptiveWD(mode)
    learn = quiet(synth_learner(n_trn=4, cbs=[cb, Boom()]))
    with pytest.raises(RuntimeError): learn.fit(1, lr=1e-2, wd=0.1)
    assert not [k for k, v in vars(cb).items() if isinstance(v, (list, tuple, dict)) and any(isinstance(x, torch.Tensor) for x in (v.values() if isinstance(v, dict) else v))]

@pytest.mark.parametrize('opt', ['fastai SGD', 'fastai SGD L2', 'torch SGD'])
@pytest.mark.parametrize('mom', [0., 0.9])
def test_swd_without_second_moment_is_sgds(opt, mom):
    "No second moment (SGD): λ (1 - dampening) / (1 - momentum), Xie et al.'s SGDS; it divided by an EMA of rms(g) and sat at `wd_max`."
    "Where the decay is L2 (torch's SGD, `decouple_wd=False`), λ: the momentum scales it so already (SGDS's factor again: accuracy 0.09, measured)"
    from functools import partial
    from fastai.optimizer import OptimWrapper
    damp = 0.5 if opt == 'torch SGD' and mom else 0.
    of = (partial(SGD, mom=mom, decouple_wd=opt == 'fastai SGD') if opt != 'torch SGD' else
          partial(OptimWrapper, opt=partial(torch.optim.SGD, momentum=mom, dampening=damp)))
    cb = AdaptiveWD('swd')
    learn = quiet(synth_learner(n_trn=3, cbs=cb)); learn.opt_func = of
    learn.fit(1, lr=1e-3, wd=1e-3)
    np.testing.assert_allclose(cb.wd_df()['wd_0'].to_numpy(), 1e-3 * (1 - damp) / (1 - mom) if opt == 'fastai SGD' else 1e-3, rtol=1e-12)
    assert not len(cb.events)

class SecondMoment(Callback):
    "The mean v̂ an Adam-family optimizer divides its next step by, read from its state by hand (before AdaptiveWD reads it)"
    order = AdaptiveWD.order - 0.1
    def before_fit(self): self.v = []
    def before_step(self):
        opt = self.learn.opt
        st = getattr(opt, 'opt', opt).state
        tot, n = 0., 0
        for p in self.learn.model.parameters():
            s = st.get(p, {})
            v = s.get('sqr_avg', s.get('exp_avg_sq'))
            if v is None: v, d = p.grad ** 2, 1.  # (before the first step: v̂ after it is g²)
            else: d = 1 - opt.hypers[0]['sqr_mom'] ** float(s['step'])
            tot, n = tot + (v / d).sum().item(), n + v.numel()
        self.v.append(tot / n)

@pytest.mark.parametrize('opt', ['fastai Adam', 'torch AdamW'])
def test_swd_reads_the_optimizers_second_moment(opt):
    "λ = base / √(mean v̂) from fastai's `sqr_avg` or, under `OptimWrapper`, torch's `exp_avg_sq` (it read only fastai's, and fell back to gradients)"
    from functools import partial
    from fastai.optimizer import Adam, OptimWrapper
    cb, sm = AdaptiveWD('swd', wd_max=1e6), SecondMoment()
    learn = quiet(synth_learner(n_trn=4, cbs=[cb, sm])); learn.opt_func = Adam if opt == 'fastai Adam' else partial(OptimWrapper, opt=torch.optim.AdamW)
    learn.fit(1, lr=1e-2, wd=1e-2)
    np.testing.assert_allclose(cb.wd_df()['wd_0'].to_numpy(), 1e-2 / (np.sqrt(sm.v) + 1e-8), rtol=1e-5)

def mlp(depth, w=8):
    return nn.Sequential(nn.Linear(1, w), *[m for _ in range(depth) for m in (nn.ReLU(), nn.Linear(w, w))], nn.ReLU(), nn.Linear(w, 1))

class Around(Callback):
    "Keeps, at each step, the decayed weights, Adam's momentum and lr right after the optimizer step (before AdaptiveWD's decay) and after it"
    order = AdaptiveWD.order - 0.1
    def before_fit(self): self.rows = []
    def after_step(self):
        opt = self.learn.opt
        ps = [p for p in self.model.parameters() if opt.state.get(p, {}).get('do_wd', True)]
        self.rows.append(dict(ps=ps, w=[p.detach().clone() for p in ps], d=[opt.state[p]['grad_avg'].clone() for p in ps], lr=opt.hypers[0]['lr']))
class After(Callback):
    order = AdaptiveWD.order + 0.1
    def __init__(self, around): self.around = around
    def after_step(self): self.around.rows[-1]['after'] = [p.detach().clone() for p in self.around.rows[-1]['ps']]

def test_cautious_decay_is_the_per_tensor_rule():
    "The multi-tensor cautious decay equals p - lr λ p [d p >= 0], tensor by tensor"
    cb, a = AdaptiveWD('cautious'), Around()
    learn = quiet(synth_learner(n_trn=4, cbs=[cb, a, After(a)])); learn.model = mlp(3)
    learn.fit(1, lr=1e-2, wd=0.3)
    for r in a.rows:
        for w, d, after in zip(r['w'], r['d'], r['after']):
            assert torch.equal(after, w - r['lr'] * 0.3 * w * ((d * w) >= 0))
    assert any((r['after'][0] != r['w'][0]).any() for r in a.rows) and any(((d * w) < 0).any() for r in a.rows for w, d in zip(r['w'], r['d']))

def test_equilibrium_matches_per_tensor_measurement():
    "Each tensor's λ moves toward (|Δw|/|w|)²/(2 lr) from its own update ratio, within [λ/bound, λ·bound]; then p <- p (1 - lr λ)"
    cb, a = AdaptiveWD('equilibrium', every=1, gain=0.5), Around()
    class Before(Callback):
        order = AdaptiveWD.order + 0.1
        def before_fit(self): self.w = []
        def before_step(self):
            opt = self.learn.opt
            self.w.append([p.detach().clone() for p in self.model.parameters() if opt.state.get(p, {}).get('do_wd', True)])
    b = Before()
    learn = quiet(synth_learner(n_trn=4, cbs=[cb, a, After(a), b])); learn.model = mlp(2)
    learn.fit(1, lr=1e-2, wd=1e-2)
    lam = [1e-2] * len(b.w[0])
    for w0s, r in zip(b.w, a.rows):
        for j, (w0, w1, after) in enumerate(zip(w0s, r['w'], r['after'])):
            ratio = ((w1 - w0).double().norm() / w0.double().norm()).item()
            lam[j] = min(max(lam[j] * (ratio ** 2 / (2 * r['lr']) / lam[j]) ** 0.5, 1e-3), 1e-1)
            torch.testing.assert_close(after, w1 * (1 - r['lr'] * lam[j]), rtol=1e-6, atol=1e-9)
    pos = [k for k, p in enumerate(learn.opt.param_lists[0]) if learn.opt.state.get(p, {}).get('do_wd', True)]  # (keys: places in the group)
    for j, l in enumerate(lam): assert math.isclose(cb.state[('eq', 0, pos[j])], l, rel_tol=1e-4)
    assert len(set(round(l, 8) for l in lam)) > 1  # the tensors moved apart: λ is per tensor

@pytest.mark.parametrize('mode', MODES)
def test_op_count_does_not_grow_with_depth(mode):
    "Per step, each mode dispatches as many tensor ops for 20 hidden layers as for 2 (multi-tensor ops, one host read)"
    import sys, os
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'bench'))
    from overhead import OpCount
    def ops(depth, cbs, n):
        from fastai.optimizer import Adam
        torch.manual_seed(0); learn = quiet(synth_learner(n_trn=n, cbs=cbs)); learn.model, learn.opt_func = mlp(depth), Adam  # ('swd' reads Adam's v̂)
        with OpCount() as oc: learn.fit(1, lr=1e-3, wd=1e-2)
        return oc.n
    def marginal(depth):
        kw = dict(every=1) if mode == 'equilibrium' else {}
        return ((ops(depth, [AdaptiveWD(mode, **kw)], 12) - ops(depth, [AdaptiveWD(mode, **kw)], 4)) - (ops(depth, [], 12) - ops(depth, [], 4))) / 8
    o2, o20 = marginal(2), marginal(20)
    assert o20 <= o2 + 2, (o2, o20)  # (per-tensor ops would add tens of ops per step)

def test_equilibrium_keys_follow_the_tensor_through_unfreeze():
    "fine_tune's frozen phase decays only the body's BatchNorm: their λ must stay theirs once the body is unfrozen"
    from fastai.torch_core import params
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randn(64, 2)
    dls = DataLoaders(DataLoader(list(zip(x, y)), bs=16, shuffle=True), DataLoader(list(zip(x, y)), bs=16))
    body = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU()); m = nn.Sequential(body, nn.Linear(16, 2))
    cb = AdaptiveWD('equilibrium', every=1)
    learn = quiet(Learner(dls, m, loss_func=nn.MSELoss(), splitter=lambda m: [params(m[0]), params(m[1])], cbs=cb, wd_bn_bias=True, wd=0.01))
    learn.freeze(); learn.fit(1)  # the body: only its BatchNorm trains (train_bn)
    bn = {j for j, p in enumerate(learn.opt.param_lists[0]) if p is body[1].weight or p is body[1].bias}
    assert {k[2] for k in cb.state if k[:2] == ('eq', 0)} == bn  # keyed by their place in the group, not in the trainable subset
    learn.unfreeze(); learn.fit(1)
    assert {k[2] for k in cb.state if k[:2] == ('eq', 0)} == set(range(4))

def test_equilibrium_follows_a_later_fits_base():
    "A second fit with wd=0 (or a schedule to 0): the λ carried over from the first kept decaying (0.07 applied, 'kept λ' events)"
    class Pre(Callback):
        order = AdaptiveWD.order - 0.5
        def after_step(self): self.w = [p.detach().clone() for p in self.learn.model.parameters()]
    class Post(Callback):
        order = AdaptiveWD.order + 0.5
        def before_fit(self): self.same = []
        def after_step(self): self.same.append(all(torch.equal(p, q) for p, q in zip(self.learn.model.parameters(), self.learn.pre.w)))
    cb = AdaptiveWD('equilibrium', every=1)
    learn = quiet(synth_learner(n_trn=4, cbs=cb))
    learn.fit(2, 1e-2, wd=0.1)
    assert cb.hist[-1][1] > 0
    post = Post(); learn.fit(1, 1e-2, wd=0., cbs=[Pre(), post])
    assert all(post.same) and cb.hist[-1][1] == 0 and learn.opt.hypers[0]['wd'] == 0
    learn.fit(1, 1e-2, wd=1e-3)  # (a smaller base: λ within [base/bound, base·bound] of it, not the first fit's)
    assert 1e-4 <= cb.hist[-1][1] <= 1e-2

@pytest.mark.parametrize('mode', MODES)
def test_base_where_the_fit_has_no_weight_decay(mode):
    "`base`: the λ a mode adapts from where the optimizer's is 0 (every mode scales the fit's own λ: 0 stayed 0); the fit's 0 put back"
    cb = AdaptiveWD(mode, base=0.01, **_eq(mode))
    learn = quiet(synth_learner(n_trn=4, cbs=cb))
    learn.fit(1, 1e-2, wd=0.)
    assert cb.bases[-1] == [0.01] and all(h[1] > 0 for h in cb.hist) and learn.opt.hypers[0]['wd'] == 0
    learn.fit(1, 1e-2, wd=0.05)
    assert cb.bases[-1] == [0.05]  # (a fit with its own: that one)

def test_equilibrium_history_is_the_lambda_applied():
    "'equilibrium' with wd_max below base/bound: the history recorded base/bound (0.01) where 1e-4 was applied"
    cb = AdaptiveWD('equilibrium', wd_max=1e-4, every=1)
    learn = quiet(synth_learner(n_trn=4, cbs=cb))
    learn.fit(1, 1e-2, wd=0.1)
    assert max(h[1] for h in cb.hist) <= 1e-4


# --- steps that are not taken (an audit, 2026-11-28) ---

class _SkipStep(Callback):
    "What fastai's MixedPrecision (order 10) does when the GradScaler finds inf/nan gradients: CancelStepException, no step"
    order = 10
    def __init__(self, its): self.its, self.moved = its, []
    def before_step(self):
        self.w, self.skip = [p.detach().clone() for p in self.model.parameters()], self.train_iter in self.its
        if self.skip: raise CancelStepException()
    def after_step(self): pass
    def after_batch(self):
        if self.skip: self.moved.append(any(not torch.equal(a, b) for a, b in zip(self.w, self.model.parameters())))

class _CancelBatch(Callback):
    "A later callback that drops a batch in before_step (a 'skip bad step' guard): AdaptiveWD's after_step never comes"
    order = 20
    def before_step(self):
        if self.train_iter == 2: raise CancelBatchException()

def _eq(mode): return dict(every=1) if mode == 'equilibrium' else {}  # (`every` read by 'equilibrium' only: set for another, a warning)

def _wd_learner(cbs):
    torch.manual_seed(0)
    return quiet(Learner(digits_dls(flat=True, n_train=512), nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)),
                         loss_func=nn.CrossEntropyLoss(), opt_func=SGD, cbs=cbs))

@pytest.mark.parametrize('mode', ['awd', 'swd', 'cautious', 'equilibrium'])
def test_a_skipped_step_is_no_step(mode):
    "A skip at the first step crashed ('awd'/'swd': no wd to set; 'cautious'/'equilibrium': no base); a later one still decayed the weights"
    sk = _SkipStep({0, 3})
    learn = _wd_learner([AdaptiveWD(mode, **_eq(mode)), sk])
    learn.fit(1, lr=0.1, wd=0.5)
    assert sk.moved == [False, False]
    assert [h['wd'] for h in learn.opt.hypers] == [0.5]

@pytest.mark.parametrize('mode', ['awd', 'cautious', 'equilibrium'])
def test_a_cancelled_batch_leaves_the_fits_weight_decay(mode):
    "The adapted λ stayed in the optimizer and was read as the fit's own from then on (0 for 'cautious': decay off for the rest of the fit)"
    cb = AdaptiveWD(mode, **_eq(mode))
    learn = _wd_learner([cb, _CancelBatch()])
    learn.fit(1, lr=0.1, wd=0.3)
    assert all(b == [0.3] for b in cb.bases), cb.bases[:6]
    assert [h['wd'] for h in learn.opt.hypers] == [0.3]


def test_history_bounded():
    "AdaptiveWD kept two lists of every batch's λ forever, pickled by learn.export (61 MiB at 1M batches): thinned past 2 x max_rows"
    from fastai.test_utils import synth_learner
    cb = AdaptiveWD('awd', max_rows=8)
    learn = synth_learner(n_trn=25, cbs=cb)
    with learn.no_bar(), learn.no_logging(): learn.fit(2)
    b = [h[0] for h in cb.hist]
    assert 12 <= len(cb.hist) <= 16 and len(cb.bases) == len(cb.hist), len(cb.hist)
    assert b == sorted(b) and b[-1] == 49 and b[-8:] == list(range(42, 50)) and b[0] == 0  # (the last batches at full resolution, the first kept)
    with pytest.raises(ValueError, match='`max_rows`'): AdaptiveWD(max_rows=2)


def test_an_argument_the_mode_does_not_read_is_said():
    "`AdaptiveWD('awd', gain=0.5)`: `gain` is read by 'equilibrium' only, and did nothing, silently"
    import warnings
    with pytest.warns(UserWarning, match=r"`gain`, `every` not read with 'awd'"): AdaptiveWD('awd', gain=0.5, every=3)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        AdaptiveWD('equilibrium', gain=0.5, every=3); AdaptiveWD('swd', eps=1e-6); AdaptiveWD('awd', gain=0.05)  # (read; or the default)

@pytest.mark.parametrize('mode', ['cautious', 'equilibrium'])
def test_update_ratio_holds_the_decay_applied_by_hand(mode):
    "'cautious' and 'equilibrium' decay by hand after the step: GradientHealth's update ratio is the whole change of the step,"
    "measured against the weights after every callback (it left that decay out: 52% low with SGD at wd 0.1)"
    from functools import partial
    from fastai.optimizer import SGD
    from initcb.gradients import GradientHealth
    class Truth(Callback):
        order = 1000
        def __init__(self): self.r = []
        def before_step(self): self.w0 = [p.detach().clone() for p in self.learn.model.parameters()]
        def after_step(self): self.r.append([((p.detach() - w).norm() / w.norm()).item() for p, w in zip(self.learn.model.parameters(), self.w0)])
    torch.manual_seed(0)
    gh, t = GradientHealth(update_every=1, warn=False), Truth()
    learn = quiet(Learner(digits_dls(bs=128), nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)), loss_func=nn.CrossEntropyLoss(),
                          opt_func=partial(SGD, mom=0.9), wd=0.1, cbs=[gh, AdaptiveWD(mode, every=1) if mode == 'equilibrium' else AdaptiveWD(mode), t]))
    learn.fit(1, 0.1)
    df = gh.to_df(per='param')
    got = df[df.param == '1.weight'].update_ratio.to_numpy()
    np.testing.assert_allclose(got, np.array(t.r)[:, 0], rtol=1e-5)

def test_grad_update_ratio_takes_out_this_steps_decay():
    "'awd' sets the optimizer's λ for the step: GradientHealth takes that λ's decoupled decay out of the step (`grad_update_ratio`),"
    "reading it in its `after_step`, after AdaptiveWD's: the λ stays until `after_batch`"
    from functools import partial
    from fastai.optimizer import SGD
    from initcb.gradients import GradientHealth
    class Truth(Callback):
        order = 1000
        def __init__(self): self.r = []
        def before_step(self):
            self.w0 = [p.detach().clone() for p in self.learn.model.parameters()]
            self.c = self.learn.opt.hypers[0]['lr'] * self.learn.opt.hypers[0]['wd']
        def after_step(self):
            self.r.append([((w - p.detach() - self.c * w).norm() / w.norm()).item() for p, w in zip(self.learn.model.parameters(), self.w0)])
    torch.manual_seed(0)
    gh, t = GradientHealth(update_every=1, warn=False), Truth()
    learn = quiet(Learner(digits_dls(bs=128), nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)), loss_func=nn.CrossEntropyLoss(),
                          opt_func=partial(SGD, mom=0.9), wd=0.1, cbs=[gh, AdaptiveWD('awd'), t]))
    learn.fit(1, 0.1)
    df = gh.to_df(per='param')
    np.testing.assert_allclose(df[df.param == '1.weight'].grad_update_ratio.to_numpy(), np.array(t.r)[:, 0], rtol=1e-4)
    assert all(h['wd'] == 0.1 for h in learn.opt.hypers)

def test_grad_update_ratio_takes_out_the_decay_by_hand():
    "'equilibrium' decays by hand after the step (the optimizer's wd 0 for it): `grad_update_ratio` counted that decay as the gradient's"
    from functools import partial
    from fastai.optimizer import SGD
    from initcb.gradients import GradientHealth
    class Between(Callback):  # (after the optimizer step, before AdaptiveWD's decay by hand: the gradient's step alone)
        order = AdaptiveWD.order - 0.1
        def __init__(self): self.r = []
        def before_step(self): self.w0 = [p.detach().clone() for p in self.learn.model.parameters()]
        def after_step(self): self.r.append([((p.detach() - w).norm() / w.norm()).item() for p, w in zip(self.learn.model.parameters(), self.w0)])
    torch.manual_seed(0)
    gh, t = GradientHealth(update_every=1, warn=False), Between()
    learn = quiet(Learner(digits_dls(bs=128), nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)), loss_func=nn.CrossEntropyLoss(),
                          opt_func=partial(SGD, mom=0.9), wd=0.5, cbs=[gh, AdaptiveWD('equilibrium', every=1), t]))
    learn.fit(1, 0.1)
    df = gh.to_df(per='param')
    w = df[df.param == '1.weight']
    np.testing.assert_allclose(w.grad_update_ratio.to_numpy(), np.array(t.r)[:, 0], rtol=1e-4)
    assert (w.update_ratio.to_numpy() != w.grad_update_ratio.to_numpy()).all()  # (the decay was there to take out)

def test_lambda_pinned_at_the_cap_is_said_once():
    "A λ pinned at `wd_max` every step said nothing: one event per group and fit when λ is capped ('swd' with Adam: rms(g) about 0.01 here)"
    from fastai.optimizer import Adam
    torch.manual_seed(0)
    aw = AdaptiveWD('swd', wd_max=0.05)
    learn = quiet(Learner(digits_dls(bs=128), nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)), loss_func=nn.CrossEntropyLoss(),
                          opt_func=Adam, wd=0.01, cbs=aw))
    learn.fit(1, 0.1)
    ev = aw.events
    capped = ev[ev.event.str.contains('over wd_max')]
    assert len(capped) == 1 and 'capped at 0.05' in capped.event.iloc[0], ev
    assert max(h[1] for h in aw.hist) == 0.05
    learn.fit(1, 0.1)
    assert aw.events.event.str.contains('over wd_max').sum() == 2  # (said again in the next fit)

def test_step_count_kept_in_state():
    "`state['n_seen']` (what a resumed AdaptiveWD counts on from) follows every mode's steps"
    for mode in MODES:
        aw = AdaptiveWD(mode)
        learn = quiet(synth_learner(n_trn=5, cbs=aw)); learn.fit(2)
        assert aw.n_seen == aw.state['n_seen'] == 2 * len(learn.dls.train), mode

@pytest.mark.parametrize('mode', MODES)
def test_nothing_to_adapt_from_is_said_once(mode):
    "wd=0 and no `base`: λ stays 0 by design, but no mode said why nothing adapted, and 'equilibrium' copied the weights to log 'update ratio unmeasurable' at every measurement"
    cb = AdaptiveWD(mode, **_eq(mode))
    learn = quiet(synth_learner(n_trn=8, cbs=cb))
    with pytest.warns(UserWarning, match='weight decay is 0 in every parameter group'): learn.fit(2, 1e-2, wd=0.)
    assert cb.events.event.tolist() == ["the fit's weight decay is 0 and `base` is None: λ stays 0 (pass `base=` to adapt from a value)"]
    assert all(h[1] == 0 for h in cb.hist) and learn.opt.hypers[0]['wd'] == 0
    with warnings.catch_warnings(): warnings.simplefilter('error'); learn.fit(1, 1e-2, wd=0.01)  # (a fit with a weight decay: nothing said)
    assert len(cb.events) == 1

def test_one_group_without_weight_decay_is_an_event_not_a_warning():
    from fastai.torch_core import params
    cb = AdaptiveWD('equilibrium', every=1)
    m = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1))
    learn = quiet(synth_learner(n_trn=8, cbs=cb)); learn.model = m
    learn.splitter = lambda m: [params(m[0]), params(m[2])]
    learn.create_opt(); learn.opt.set_hyper('wd', [0., 0.1])
    with warnings.catch_warnings(): warnings.simplefilter('error'); learn.fit(1, 1e-2, wd=[0., 0.1])
    assert cb.events.group.tolist() == [0] and cb.hist[-1][1] == 0 and cb.hist[-1][2] > 0

def test_grad_update_ratio_takes_out_the_cautious_decay():
    "'cautious' decays by hand after the step, coordinate by coordinate where the update and the weight agree in sign:"
    "GradientHealth's `grad_update_ratio` counted that decay as the gradient's (it takes out the coordinates' own decay now)"
    from functools import partial
    from fastai.optimizer import SGD
    from initcb.gradients import GradientHealth
    class Truth(Callback):  # (order -1000: the optimizer's step alone, before AdaptiveWD's decay)
        order = -1000
        def __init__(self): self.r = []
        def before_step(self): self.w0 = self.learn.model[1].weight.detach().clone()
        def after_step(self): self.r.append(((self.w0 - self.learn.model[1].weight).norm() / self.w0.norm()).item())
    torch.manual_seed(0)
    gh, t = GradientHealth(update_every=1, warn=False), Truth()
    learn = quiet(Learner(digits_dls(bs=128), nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)), loss_func=nn.CrossEntropyLoss(),
                          opt_func=partial(SGD, mom=0.9), wd=0.1, cbs=[gh, AdaptiveWD('cautious'), t]))
    learn.fit(1, 0.1)
    want = np.array(t.r)
    df = gh.to_df(per='param')
    got = df[df.param == '1.weight']
    assert not np.allclose(got.update_ratio, want, rtol=1e-3)  # (the decay did take something: the case)
    np.testing.assert_allclose(got.grad_update_ratio.to_numpy(), want, rtol=1e-4)

@pytest.mark.parametrize('mode', ['awd', 'cautious', 'equilibrium'])
def test_an_epoch_cut_short_after_the_step_keeps_the_fits_weight_decay(mode):
    "fastai's ShortEpochCallback raises CancelEpochException in `after_batch`, before ours: the step's λ stayed in the optimizer,"
    "was read as the fit's own from then on (0 for the modes that decay by hand: no decay at all) and was left after the fit"
    from fastai.callback.training import ShortEpochCallback
    cb = AdaptiveWD(mode)
    learn = quiet(synth_learner(n_trn=10, cbs=cb))
    with warnings.catch_warnings(): warnings.simplefilter('ignore'); learn.fit(2, lr=1e-2, wd=0.1, cbs=ShortEpochCallback(0.5))
    assert len(cb.bases) > 6 and all(b == [0.1] for b in cb.bases), cb.bases
    assert learn.opt.hypers[0]['wd'] == 0.1


# --- the optimizer's kind of decay, two on a learner, parameters with no gradient, a new model (a probe) ---

def _opt(kind):
    from functools import partial
    from fastai.optimizer import Adam, OptimWrapper
    return dict(fastai_adam_l2=partial(Adam, decouple_wd=False), torch_adam=partial(OptimWrapper, opt=torch.optim.Adam),
                torch_rmsprop=partial(OptimWrapper, opt=torch.optim.RMSprop),
                fastai_adam=Adam, torch_adamw=partial(OptimWrapper, opt=torch.optim.AdamW),
                torch_adam_dec=partial(OptimWrapper, opt=partial(torch.optim.Adam, decoupled_weight_decay=True)))[kind]

@pytest.mark.parametrize('kind,says', [('fastai_adam_l2', 'decouple_wd=False'), ('torch_adam', 'torch.optim.Adam'), ('torch_rmsprop', 'torch.optim.RMSprop')])
def test_swd_refuses_an_l2_adam(kind, says):
    "'swd' scales decoupled decay by 1/√(mean v̂) (AdamS); as an L2 optimizer's wd, which Adam already divides by √v̂, λ sat at wd_max and"
    "the fit collapsed (accuracy 0.09 against 0.77-0.89 at a fixed wd), silently: refused at `before_fit`, nothing stepped"
    from initcb.activations import ActivationHealth
    from initcb.gradients import GradientHealth
    from helpers import n_hooks
    learn = _wd_learner([ActivationHealth(), GradientHealth(warn=False), AdaptiveWD('swd')]); learn.opt_func = _opt(kind)
    w0 = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError, match=rf"AdaptiveWD\('swd'\).*L2.*{says}"): learn.fit(1, lr=1e-2, wd=0.05)
    assert all(torch.equal(a, b) for a, b in zip(w0, learn.model.parameters())) and learn.opt.hypers[0]['wd'] == 0.05
    assert n_hooks(learn.model) == 0 and '_with_events' not in learn.__dict__  # (the callbacks set up before it: cleaned up)

@pytest.mark.parametrize('kind', ['fastai_adam', 'torch_adamw', 'torch_adam_dec'])
def test_swd_takes_a_decoupled_optimizer(kind):
    cb = AdaptiveWD('swd')
    learn = _wd_learner([cb]); learn.opt_func = _opt(kind)
    with warnings.catch_warnings(): warnings.simplefilter('error'); learn.fit(1, lr=1e-2, wd=0.05)
    assert len(cb.hist) == len(learn.dls.train)

@pytest.mark.parametrize('mode', ['cautious', 'equilibrium'])
def test_decay_by_hand_under_l2_is_said(mode):
    "'cautious' and 'equilibrium' set an L2 optimizer's wd to 0 and decay decoupled by hand: the fit's λ read as a decoupled rate, said once a fit"
    cb = AdaptiveWD(mode, **_eq(mode))
    learn = _wd_learner([cb]); learn.opt_func = _opt('torch_adam')
    learn.fit(2, lr=1e-2, wd=0.05)
    ev = cb.events.event
    assert ev.str.contains('L2').sum() == 1 and ev.str.contains('decoupled').all(), ev.tolist()
    assert learn.opt.hypers[0]['wd'] == 0.05

@pytest.mark.parametrize('modes', [('awd', 'awd'), ('awd', 'cautious')])
def test_two_on_one_learner_refused(modes):
    "Two AdaptiveWD each put back the λ the other had set as the fit's own: the optimizer's wd went 0.01 -> 5.5e-15 and stayed for later fits"
    cbs = [AdaptiveWD(m) for m in modes]
    learn = _wd_learner([cbs[1]]); learn.fit(1, lr=1e-2, wd=0.01)  # (one with a past fit: it must not put that fit's wd back)
    learn.remove_cb(cbs[1]); learn.add_cbs(cbs)
    with pytest.raises(ValueError, match='2 AdaptiveWD'): learn.fit(1, lr=1e-2, wd=0.05)
    assert learn.opt.hypers[0]['wd'] == 0.05
    learn.remove_cb(cbs[0]); learn.fit(1, lr=1e-2, wd=0.05)  # (one: it runs, the fit's wd back after it)
    assert learn.opt.hypers[0]['wd'] == 0.05 and len(cbs[1].hist) == 2 * len(learn.dls.train)

class _Fixed(nn.Module):
    "A feature extractor under torch.no_grad (never trained: its parameters get no gradient), a head that trains"
    def __init__(self): super().__init__(); self.feat, self.head = nn.Sequential(nn.Linear(64, 32), nn.ReLU()), nn.Linear(32, 10)
    def forward(self, x):
        with torch.no_grad(): z = self.feat(x)
        return self.head(z)

@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('kind', ['fastai_adam', 'torch_adamw'])
def test_no_gradient_no_decay(mode, kind):
    "fastai's and torch's optimizers skip a parameter with no gradient; 'equilibrium' decayed it by hand (norm 3.29 -> 2.95 in 5 epochs) and logged 'unmeasurable'"
    torch.manual_seed(0)
    m = _Fixed(); w0 = [p.detach().clone() for p in m.feat.parameters()]
    cb = AdaptiveWD(mode, **_eq(mode))
    learn = quiet(Learner(digits_dls(flat=True, n_train=256), m, loss_func=nn.CrossEntropyLoss(), opt_func=_opt(kind), cbs=cb, wd=0.1))
    learn.fit(2, lr=1e-2)
    assert all(p.grad is None for p in m.feat.parameters())
    assert all(torch.equal(a, b) for a, b in zip(w0, m.feat.parameters()))
    assert not cb.events.event.str.contains('unmeasurable').any(), cb.events.event.tolist()

@pytest.mark.parametrize('mode', ['awd', 'equilibrium'])
def test_lambda_starts_afresh_on_another_model(mode):
    "An AdaptiveWD moved to another model began from the first one's λ ('equilibrium': 0.059 where a fresh one begins at the fit's 0.1); a second fit of the same model carries on"
    def fit(cb, model=None, n=1, seed=1):
        torch.manual_seed(seed)
        model = model or nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))
        learn = quiet(Learner(digits_dls(flat=True, n_train=256), model, loss_func=nn.CrossEntropyLoss(), cbs=cb, wd=0.1))
        learn.fit(n, lr=3e-2); learn.remove_cb(cb); return learn
    cb = AdaptiveWD(mode, **_eq(mode)); m1 = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    learn = fit(cb, m1, 2, seed=0)
    last, n = dict(cb.state), len(cb.hist)
    assert any(v != 0.1 for k, v in last.items() if isinstance(k, tuple))
    learn.add_cb(cb); learn.fit(1, lr=3e-2)  # (the same model again: it carries on)
    assert cb.hist[0][0] == 0 and cb.hist[n][0] == n and cb.n_seen == len(cb.hist) == 3 * n // 2  # (its λ and history go on)
    with pytest.warns(UserWarning, match="AdaptiveWD: the model's parameters changed"): fit(cb)
    fresh = AdaptiveWD(mode, **_eq(mode)); fit(fresh)
    assert cb.hist == fresh.hist and cb.state == fresh.state and cb.n_seen == len(cb.hist)  # (afresh: as a new one, from the fit's λ)
    cb2 = AdaptiveWD(mode, **_eq(mode)).load_state_dict(last)  # (restored beside the model: taken on whatever model it meets)
    with warnings.catch_warnings(): warnings.simplefilter('error'); fit(cb2, m1)
    assert cb2.hist[0][0] == last['n_seen'] and cb2.hist[0][1] != fresh.hist[0][1]
