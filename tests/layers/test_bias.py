import math

import torch

from timm_pe.layers import Alibi2d, TableCache, RelativePositionBias, alibi_slopes, relative_position_index

CPU = torch.device('cpu')


def test_alibi_slopes_power_of_two_and_not():
    torch.testing.assert_close(alibi_slopes(4), torch.tensor([2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8]))
    expected6 = [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]
    torch.testing.assert_close(alibi_slopes(6), torch.tensor(expected6))


def test_alibi_bias_is_minus_slope_times_distance():
    grid, heads, prefix = (3, 4), 6, 1
    bias = Alibi2d(heads).bias(grid, prefix, CPU)
    slopes = alibi_slopes(heads)
    n = grid[0] * grid[1]
    assert bias.shape == (heads, n + prefix, n + prefix)
    for i in range(n):
        for j in range(n):
            yi, xi, yj, xj = i // grid[1], i % grid[1], j // grid[1], j % grid[1]
            dist = math.sqrt((xi - xj) ** 2 + (yi - yj) ** 2)
            torch.testing.assert_close(bias[:, prefix + i, prefix + j], -slopes * dist)
    assert torch.all(bias[:, 0, :] == 0) and torch.all(bias[:, :, 0] == 0)


def test_rpb_index_matches_loop_reference():
    h, w = 3, 5
    index = relative_position_index((h, w))
    for i in range(h * w):
        for j in range(h * w):
            dy = i // w - j // w
            dx = i % w - j % w
            assert index[i, j] == (dy + h - 1) * (2 * w - 1) + (dx + w - 1)


def test_rpb_bias_reads_the_table_by_offset():
    rpb = RelativePositionBias(num_heads=2, grid=(3, 4))
    bias = rpb.bias((3, 4), 1, CPU)
    index = relative_position_index((3, 4))
    torch.testing.assert_close(bias[:, 1 + 5, 1 + 2], rpb.relative_position_bias_table[index[5, 2]])
    assert torch.all(bias[:, 0] == 0)


def test_rpb_resizes_for_a_new_grid():
    rpb = RelativePositionBias(num_heads=2, grid=(3, 3))
    center = rpb.relative_position_bias_table.detach()[2 * 5 + 2].clone()  # offset (0, 0)
    rpb.set_grid((5, 5))
    assert rpb.relative_position_bias_table.shape == (81, 2)
    assert rpb.bias((5, 5), 0, CPU).shape == (2, 25, 25)
    torch.testing.assert_close(rpb.relative_position_bias_table.detach()[4 * 9 + 4], center, atol=.02, rtol=0)


def test_grid_cache_is_bounded_and_reuses_entries():
    cache = TableCache(max_entries=2)
    built = []
    for key in ['a', 'b', 'a', 'c', 'b']:
        cache.get(key, lambda key=key: built.append(key) or key)
    assert built == ['a', 'b', 'c', 'b']  # 'b' was evicted when 'c' came in
    assert len(cache) == 2


def test_tables_built_under_inference_mode_serve_training():
    import timm
    model = timm.create_model('vit_tiny_rope_mixed', depth=1, embed_dim=48, img_size=(48, 80))
    with torch.inference_mode():
        model(torch.randn(1, 3, 48, 80))
    model(torch.randn(1, 3, 48, 80)).sum().backward()
    assert model.blocks[0].attn.pos_enc.freqs.grad is not None
