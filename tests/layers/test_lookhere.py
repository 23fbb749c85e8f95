import math

import pytest
import torch
from torch.nn import functional as F

from reference import lookhere_reference
from timm_pe.layers import PositionalAttention
from timm_pe.layers.lookhere import DIRECTIONS, LookHere, head_plan

CPU = torch.device('cpu')


@pytest.mark.parametrize('directions', list(DIRECTIONS))
@pytest.mark.parametrize('grid', [(4, 4), (3, 5), (9, 9)])  # 9x9: extrapolation beyond a 4x4 training grid
def test_bias_equals_the_reference_construction(directions, grid):
    heads, depth, layer, prefix = 12, 5, 3, 1
    enc = LookHere(heads, layer, depth, directions, global_slope=.7, layer_slopes=(1.5, .5))
    bias = enc.bias(grid, prefix, CPU)
    plan = head_plan(directions, heads)
    factor = .7 * (1.5 + (.5 - 1.5) * layer / (depth - 1))
    expected = lookhere_reference(grid, [v for v, _ in plan], [s for _, s in plan], factor).float()
    n = grid[0] * grid[1]
    assert bias.shape == (heads, n + prefix, n + prefix)
    torch.testing.assert_close(bias[:, prefix:, prefix:], expected, rtol=1e-6, atol=0)  # inf == inf
    assert torch.all(bias[:, :prefix] == 0) and torch.all(bias[:, :, :prefix] == 0)  # class token unrestricted


def test_head_plan_follows_the_reference_for_twelve_heads():
    plan = head_plan('halves', 12)
    assert [v for v, _ in plan[:4]] == [('up',), ('down',), ('left',), ('right',)]
    assert [s for _, s in plan] == [.5] * 4 + [.25] * 4 + [.125] * 4  # np.repeat(2^-(1..3), 4)
    assert [s for _, s in head_plan('eighths', 12)] == [.5] * 8 + [.25] * 4


def test_a_head_sees_its_half_plane_and_nothing_else():
    bias = LookHere(4, directions='halves').bias((3, 3), 0, CPU)
    centre = 4  # (x, y) = (1, 1)
    up = bias[0, centre].view(3, 3)
    assert torch.isinf(up[2]).all() and torch.isfinite(up[:2]).all()  # the row below is hidden
    assert up[1, 1] == 0 and up[0, 1] == -1.5 * .5  # first-layer slope 1.5, head slope 1/2, distance 1
    right = bias[3, centre].view(3, 3)
    assert torch.isinf(right[:, 0]).all() and torch.isfinite(right[:, 1:]).all()


def test_layer_slopes_run_linearly_over_depth():
    factors = [LookHere(4, i, 5, layer_slopes=(1.5, .5)).factor for i in range(5)]
    assert factors == pytest.approx([1.5, 1.25, 1., .75, .5])


def test_each_layer_keeps_its_scaled_bias():
    first, last = LookHere(4, layer=0, depth=3), LookHere(4, layer=2, depth=3)
    bias = first.bias((3, 5), 1, CPU)
    assert first.bias((3, 5), 1, CPU) is bias  # built once, not per forward
    torch.testing.assert_close(last.bias((3, 5), 1, CPU), bias * (last.factor / first.factor))


def test_no_distance_penalty_gives_a_bool_mask_sdpa_takes():
    enc = LookHere(4, directions='corners', global_slope=0.)
    mask = enc.bias((4, 5), 1, CPU)
    assert mask.dtype == torch.bool
    float_bias = LookHere(4, directions='corners').bias((4, 5), 1, CPU)
    assert torch.equal(mask, torch.isfinite(float_bias))
    attn = PositionalAttention(64, 4, pos_enc=enc, num_prefix_tokens=1).eval()
    x = torch.randn(2, 21, 64)
    q, k, v = attn.qkv(x).view(2, 21, 3, 4, 16).permute(2, 0, 3, 1, 4)
    additive = torch.zeros(mask.shape).masked_fill(~mask, -math.inf)
    expected = attn.proj(F.scaled_dot_product_attention(q, k, v, attn_mask=additive).transpose(1, 2).reshape(2, 21, 64))
    with torch.no_grad():
        torch.testing.assert_close(attn(x, (4, 5)), expected)
        user_mask = torch.zeros(21, 21)
        torch.testing.assert_close(attn(x, (4, 5), user_mask), expected)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match='lookhere_directions'):
        LookHere(4, directions='octants')
    with pytest.raises(ValueError, match='slopes'):
        LookHere(4, layer_slopes=(1.,))
    with pytest.raises(ValueError, match='depth'):
        LookHere(4, layer=3, depth=2)
