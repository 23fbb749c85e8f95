"""Swin at any size: with ``dynamic_img_size=True`` every input uses the windows its size implies (image / 32 by
default, a fixed ``window_size`` otherwise), and gives the logits of a Swin built at that size."""
import pytest
import timm
import torch

import timm_pe  # noqa: F401  (registers the models)
from timm_pe.layers import rpb
from timm_pe.models.swin import ATTN_POS

from tests.helpers import unit_scale_attention

# four stages of two blocks, so every stage whose grid is larger than its window has a shifted block
TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), num_classes=5)


pytestmark = pytest.mark.usefixtures('one_thread')


def tiny(enc, **kwargs):
    torch.manual_seed(0)
    return unit_scale_attention(timm.create_model(f'swin_tiny_{enc}', **dict(TINY, **kwargs))).eval()


def geometry(model):
    return [(blk.window_size, blk.shift_size, blk.attn.window_size) for stage in model.layers for blk in stage.blocks]


def built_like(model, enc, img_size, **kwargs):
    """A Swin built at ``img_size`` holding ``model``'s weights, loaded (RPB tables resized) by load_state_dict."""
    static = tiny(enc, img_size=img_size, **kwargs)
    static.load_state_dict(model.state_dict())
    return static


@pytest.mark.parametrize('enc', ATTN_POS)
@torch.no_grad()
def test_dynamic_model_equals_a_model_built_at_each_size(enc):
    model = tiny(enc, dynamic_img_size=True)
    assert model.pretrained_cfg['fixed_input_size']  # the cfg describes the model as built by default
    # (a) at its own size it is the model built without dynamic_img_size
    x224 = torch.randn(1, 3, 224, 224)
    static224 = built_like(model, enc, 224)
    torch.testing.assert_close(model(x224), static224(x224))
    # (b) at other sizes, non-square and smaller included, the windows are image / 32 per axis, and the logits
    # those of a Swin built at the size with the same weights
    for size, window in [((256, 320), (8, 10)), ((96, 160), (3, 5))]:
        x = torch.randn(1, 3, *size)
        static = built_like(model, enc, size)
        expected = static(x)
        torch.testing.assert_close(model(x), expected)
        assert geometry(model) == geometry(static)
        assert model.layers[0].blocks[0].window_size == window and model.layers[0].blocks[1].shift_size == (
            window[0] // 2, window[1] // 2)
    # back at 224 nothing of the other sizes is left behind
    torch.testing.assert_close(model(x224), static224(x224))
    assert geometry(model) == geometry(static224)


@torch.no_grad()
def test_always_partition_keeps_windows_and_shifts_where_they_span_the_grid():
    """With ``always_partition`` a window the size of its stage grid still shifts, as timm's blocks do."""
    model = tiny('rope_axial', dynamic_img_size=True, always_partition=True)
    x = torch.randn(1, 3, 256, 192)
    static = built_like(model, 'rope_axial', (256, 192), always_partition=True)
    torch.testing.assert_close(model(x), static(x))
    assert geometry(model) == geometry(static)
    assert model.layers[3].blocks[1].shift_size == (4, 3)  # a 8x6 window on the 8x6 grid of the last stage


@torch.no_grad()
def test_fixed_window_size_stays_at_every_size_and_tiles_or_is_refused():
    model = tiny('rpb', img_size=128, window_size=4, dynamic_img_size=True)
    x = torch.randn(1, 3, 256, 128)  # stage grids 64x32 ... 8x4: a 4x4 window everywhere, no W shift at the last
    static = built_like(model, 'rpb', (256, 128), window_size=4)
    torch.testing.assert_close(model(x), static(x))
    assert geometry(model) == geometry(static)
    assert {g[0] for g in geometry(model)} == {(4, 4)} and model.layers[3].blocks[1].shift_size == (2, 0)
    with pytest.raises(ValueError, match=r'80x80 grid, which 3x3 windows do not tile.*multiples of 96x96'):
        tiny('rope_mixed', img_size=96, window_size=3, dynamic_img_size=True)(torch.randn(1, 3, 320, 320))


@torch.no_grad()
def test_sizes_that_are_not_multiples_of_32_are_refused_on_every_path():
    model = tiny('rope_axial', dynamic_img_size=True)
    with pytest.raises(ValueError, match='Image size 250x320 is not a multiple of 32x32'):
        model(torch.randn(1, 3, 250, 320))
    features = tiny('alibi2d', dynamic_img_size=True, features_only=True)
    with pytest.raises(ValueError, match='Image size 224x100 is not a multiple of 32x32'):
        features(torch.randn(1, 3, 224, 100))
    assert [f.shape[1:3] for f in features(torch.randn(1, 3, 256, 320))] == [(64, 80), (32, 40), (16, 20), (8, 10)]
    with pytest.raises(ValueError, match='not a multiple of 32x32'):
        model.forward_intermediates(torch.randn(1, 3, 240, 240))
    with pytest.raises(TypeError, match='FX cannot trace'):  # rather than a graph of one size's windows
        torch.fx.symbolic_trace(model)


def test_a_dynamic_swin_exports_at_a_static_size_with_that_sizes_windows():
    model = tiny('rpb', dynamic_img_size=True)
    x = torch.randn(1, 3, 256, 320)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), built_like(model, 'rpb', (256, 320))(x))


def test_rpb_tables_are_resized_once_per_window_until_they_change(monkeypatch):
    model = tiny('rpb', dynamic_img_size=True)
    calls = []
    resize = rpb.resize_rpb_table
    monkeypatch.setattr(rpb, 'resize_rpb_table', lambda *args: calls.append(args[2]) or resize(*args))
    x = torch.randn(1, 3, 256, 320)
    pos_enc = model.layers[0].blocks[0].attn.pos_enc
    with torch.no_grad():
        first = model(x)
        assert calls == [(8, 10)] * 8  # one resize per block
        table = pos_enc.resized_table((8, 10))
        torch.testing.assert_close(model(x), first)
        assert len(calls) == 8 and pos_enc.resized_table((8, 10)) is table  # the cached table serves again
        pos_enc.relative_position_bias_table.add_(1.)  # as an optimizer step would: the cache is refreshed
        fresh = pos_enc.resized_table((8, 10))
        assert fresh is not table and len(calls) == 9
        pos_enc.relative_position_bias_table.data.mul_(2.)  # as EMA teachers update: no version bump, seen too
        fresh = pos_enc.resized_table((8, 10))
    assert len(calls) == 10
    torch.testing.assert_close(fresh, resize(pos_enc.relative_position_bias_table.detach(), (7, 7), (8, 10)))
    # training: the resize stays in the graph, so the table gets its gradient
    model.train()
    model(x).sum().backward()
    assert pos_enc.relative_position_bias_table.grad.abs().sum() > 0


@torch.no_grad()
def test_set_input_size_follows_the_same_rule():
    model = tiny('rope_mixed', img_size=128, window_size=4)
    model.set_input_size(img_size=256)
    assert {g[0] for g in geometry(model)} == {(4, 4)}  # fixed windows stay fixed
    model.set_input_size(img_size=(256, 320), window_ratio=8)  # a ratio makes them follow the size again
    assert model.layers[0].blocks[0].window_size == (8, 10)
    model.set_input_size(img_size=(128, 128))
    assert model.layers[0].blocks[0].window_size == (4, 4) and not model.fixed_windows
