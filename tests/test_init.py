"check_init, GeneralRelu, init_weights on the layer types users have."
import math, pytest, torch
from torch import nn
from initcb.init import check_init, init_weights, GeneralRelu, following_activation, SCHEMES
from initcb.core import ACTIVATION_TYPES, select_modules
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
    assert f['0'].startswith('constant') and f['3'].startswith('symmetric: 1 units')

def test_general_relu_watched_by_activation_health():
    assert GeneralRelu in ACTIVATION_TYPES
    assert [n for n, _ in select_modules(cnn())][:3] == ['0', '1', '2']

@pytest.mark.parametrize('kw', [dict(leak=-0.1), dict(leak=2.), dict(sub=float('nan')), dict(maxv=float('inf'))])
def test_general_relu_bad_arguments(kw): bad_argument_named(GeneralRelu, kw)

def test_bad_scheme(): bad_argument_named(lambda scheme: init_weights(cnn(), scheme), dict(scheme='he'))
