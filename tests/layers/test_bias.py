import math

import pytest
import timm
import torch

from timm_pe.layers import Alibi2d, TableCache, RelativePositionBias, alibi_slopes, relative_position_index

CPU = torch.device('cpu')


def test_alibi_slopes_power_of_two_and_not():
    torch.testing.assert_close(alibi_slopes(4), torch.tensor([2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8]))
    expected6 = [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]
    torch.testing.assert_close(alibi_slopes(6), torch.tensor(expected6))


def test_alibi_spread_slopes_keep_press_eight_head_range_for_any_head_count():
    # for 8 heads Press et al.'s slopes already span 2^-1 .. 2^-8 in equal log steps: the spread is the same
    torch.testing.assert_close(alibi_slopes(8, 'spread'), alibi_slopes(8))
    for heads in (2, 3, 4, 6, 12):
        log2 = alibi_slopes(heads, 'spread').double().log2()
        torch.testing.assert_close(log2, torch.linspace(-1, -8, heads, dtype=torch.float64))
    torch.testing.assert_close(alibi_slopes(1, 'spread'), torch.tensor([0.5]))
    # the default is unchanged: 4 heads keep 2^-2 .. 2^-8
    assert alibi_slopes(4).max() == 2 ** -2 and alibi_slopes(4, 'spread').max() == 2 ** -1


@pytest.mark.parametrize('bad', [dict(num_heads=0), dict(num_heads=2.0), dict(num_heads=4, schedule='linear')])
def test_alibi_slopes_reject_bad_input(bad):
    with pytest.raises(ValueError, match='num_heads|alibi_slopes'):
        alibi_slopes(**bad)


def test_alibi_spread_option_reaches_the_model_bias():
    kw = dict(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=4, num_classes=3, init_values=0.)
    press = timm.create_model('vit_tiny_alibi2d', **kw)
    spread = timm.create_model('vit_tiny_alibi2d', alibi_slopes='spread', **kw)
    spread.load_state_dict(press.state_dict())  # the option adds no weights
    grid, prefix = (4, 4), 1
    for model, schedule in ((press, 'press'), (spread, 'spread')):
        bias = model.blocks[0].attn.pos_enc.bias(grid, prefix, CPU)
        torch.testing.assert_close(bias, Alibi2d(4, schedule).bias(grid, prefix, CPU))
        torch.testing.assert_close(bias[:, prefix + 0, prefix + 3], -alibi_slopes(4, schedule) * 3)
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(press.eval().forward_features(x), spread.eval().forward_features(x))
    swin = timm.create_model('swin_tiny_alibi2d', alibi_slopes='spread', img_size=64, num_classes=3,
                             embed_dim=24, depths=(1,), num_heads=(4,), window_size=4)
    assert swin.layers[0].blocks[0].attn.pos_enc.slopes == 'spread'
    with pytest.raises(ValueError, match="alibi_slopes='steep' is not known"):
        timm.create_model('vit_tiny_alibi2d', alibi_slopes='steep', **kw)


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


def test_grid_cache_is_bounded_in_bytes_and_reuses_entries():
    table = lambda: torch.zeros(256)  # noqa: E731  1 KiB
    cache = TableCache(max_bytes=2048)
    built = []
    for key in ['a', 'b', 'a', 'c', 'b']:
        cache.get(key, lambda key=key: built.append(key) or table())
    assert built == ['a', 'b', 'c', 'b']  # 'b' was evicted when 'c' came in
    assert len(cache) == 2 and cache.nbytes == 2048
    cache.get('big', lambda: torch.zeros(1024))  # larger than the limit: served, not kept
    assert 'big' not in cache._tables and cache.nbytes == 2048
    cache.max_bytes = 1024  # a lower limit evicts at once
    assert len(cache) == 1 and cache.nbytes == 1024
    with pytest.raises(ValueError, match='max_bytes'):
        cache.max_bytes = -1


def test_derived_tables_follow_their_sources_and_share_the_byte_bound():
    import gc
    cache = TableCache(max_bytes=3072)
    source, built = torch.ones(256), []

    def doubled():
        built.append(1)
        return source * 2  # noqa: F821  (a closure cell: the `del source` below frees it, as the test needs)
    first = cache.derived((source,), 'double', doubled)
    assert cache.derived((source,), 'double', doubled) is first and len(built) == 1
    source.add_(1)  # updated in place (an optimizer step, a load): rebuilt
    assert torch.equal(cache.derived((source,), 'double', doubled), torch.full((256,), 4.)) and len(built) == 2
    assert len(cache) == 1 and cache.nbytes == 1024  # the stale entry was replaced, not kept beside it
    for key in 'abc':  # grid tables and derived tables evict each other, oldest first
        cache.get(key, lambda: torch.zeros(256))
    assert len(cache) == 3 and not any(k[0] == 'derived' for k in cache._tables)
    cache.derived((source,), 'double', doubled)
    del source
    gc.collect()  # a derived table is freed with its source
    assert len(cache) == 2 and cache.nbytes == 2048 and not cache._sources


def test_derived_tables_compare_parameters_by_value_on_the_cpu_and_rebuild_them_elsewhere():
    """A ``.data`` write bumps no version counter: a parameter's values are compared too. Off the CPU that
    would wait for the device, so a table derived from a parameter there is built each call (meta here)."""
    cache, built = TableCache(), []
    for device in ('cpu', 'meta'):
        param = torch.nn.Parameter(torch.ones(8, device=device))

        def doubled():
            built.append(device)
            return param.detach() * 2
        cache.derived((param,), 'double', doubled)
        cache.derived((param,), 'double', doubled)
        param.data.mul_(3)
        third = cache.derived((param,), 'double', doubled)
        if device == 'cpu':
            assert built == ['cpu', 'cpu'] and torch.equal(third, torch.full((8,), 6.))
    assert built == ['cpu', 'cpu'] + ['meta'] * 3


def test_grid_cache_limit_from_the_environment(monkeypatch):
    monkeypatch.setenv('TIMM_PE_TABLE_CACHE_MB', '1.5')
    assert TableCache().max_bytes == int(1.5 * 2 ** 20)
    monkeypatch.setenv('TIMM_PE_TABLE_CACHE_MB', 'lots')
    with pytest.raises(ValueError, match='TIMM_PE_TABLE_CACHE_MB'):
        TableCache()


def test_a_deleted_model_frees_its_tables():
    """The user's path of the issue: a 2D-ALiBi model swept over sizes, then deleted."""
    import gc
    import timm
    from timm_pe.layers import TABLE_CACHE

    def alibi_bytes():
        return sum(TABLE_CACHE._sizes[k] for k in TABLE_CACHE._tables if k[0] == 'alibi2d')

    gc.collect()
    assert alibi_bytes() == 0  # no ALiBi model is alive in this test process
    model = timm.create_model('vit_tiny_alibi2d', depth=1, embed_dim=48, dynamic_img_size=True).eval()
    other = timm.create_model('vit_tiny_rope_axial', depth=1, embed_dim=48)
    with torch.no_grad():
        for size in (32, 64, 96):
            model(torch.randn(1, 3, size, size))
        other(torch.randn(1, 3, 224, 224))
    assert alibi_bytes() > 0
    del model
    gc.collect()
    assert alibi_bytes() == 0
    assert any(k[0] == 'rope_axial' for k in TABLE_CACHE._tables)  # the live model keeps its tables


def test_tables_built_under_inference_mode_serve_training():
    import timm
    model = timm.create_model('vit_tiny_rope_mixed', depth=1, embed_dim=48, img_size=(48, 80))
    with torch.inference_mode():
        model(torch.randn(1, 3, 48, 80))
    model(torch.randn(1, 3, 48, 80)).sum().backward()
    assert model.blocks[0].attn.pos_enc.freqs.grad is not None
