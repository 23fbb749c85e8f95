import pytest
import timm
import torch
from timm.layers import RotaryEmbeddingDinoV3, apply_rot_embed_cat

import timm_pe  # noqa: F401
from timm_pe.layers.rope_dinov3 import RopeDinoV3
from timm_pe.ops import apply_rope

CPU = torch.device('cpu')
AUGMENT = dict(shift_coords=.1, jitter_coords=1.2, rescale_coords=2.)


def timm_tables(rope, grid):
    """timm's (HW, 2*dim) [sin, cos] embedding, in rotate-half layout: the first dim/2 of each are ours."""
    sin, cos = rope.get_embed(list(grid)).chunk(2, dim=-1)
    half = sin.shape[-1] // 2
    return cos[:, :half], sin[:, :half]


@pytest.mark.parametrize('grid', [(14, 14), (6, 10)])
@pytest.mark.parametrize('training', [False, True])
def test_tables_match_timm_rotary_embedding_dinov3(grid, training):
    ours = RopeDinoV3(32, theta=100., **AUGMENT).train(training)
    ref = RotaryEmbeddingDinoV3(32, temperature=100., **AUGMENT).train(training)
    torch.manual_seed(3)
    ref_cos, ref_sin = timm_tables(ref, grid)
    torch.manual_seed(3)
    ours.redraw()
    cos, sin = ours.tables(grid, CPU)
    assert torch.equal(cos[0], ref_cos) and torch.equal(sin[0], ref_sin)  # bit for bit, draws included


def test_rotated_queries_match_timm():
    grid, heads, dim, prefix = (5, 7), 3, 32, 5
    rope = RopeDinoV3(dim)
    ref = RotaryEmbeddingDinoV3(dim, temperature=100.).eval()
    qkv = torch.randn(2, prefix + 35, 3, heads, dim)
    q, k, _ = apply_rope(qkv, *rope.tables(grid, CPU), num_prefix_tokens=prefix)
    ref_q = qkv[:, :, 0].transpose(1, 2)
    ref_q = torch.cat([ref_q[:, :, :prefix], apply_rot_embed_cat(ref_q[:, :, prefix:], ref.get_embed(list(grid)),
                                                                 half=True)], dim=2)
    torch.testing.assert_close(q, ref_q, rtol=1e-6, atol=1e-6)


def test_augmentation_is_drawn_once_per_forward_and_off_at_eval():
    model = timm.create_model('vit_tiny_rope_dinov3', depth=2, embed_dim=48, img_size=64,
                              rope_shift_coords=.2)
    encs = {id(blk.attn.pos_enc) for blk in model.blocks}
    assert len(encs) == 1  # one module, one draw for every layer
    enc = model.blocks[0].attn.pos_enc
    x = torch.randn(1, 3, 64, 64)
    model(x)
    first = enc.tables((4, 4), CPU)[0]
    model(x)
    assert not torch.equal(first, enc.tables((4, 4), CPU)[0])  # a new draw each training forward
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(enc.tables((4, 4), CPU)[0], RopeDinoV3(16).tables((4, 4), CPU)[0], rtol=0, atol=0)


def test_every_resolution_spans_the_same_range():
    cos, sin = RopeDinoV3(16, rescale_coords=None).tables((3, 3), CPU)
    big_cos, _ = RopeDinoV3(16, rescale_coords=None).tables((9, 9), CPU)
    # the centre patch of a 3x3 grid and of a 9x9 grid both sit at (0, 0)
    torch.testing.assert_close(cos[0, 4], big_cos[0, 40])
    torch.testing.assert_close(cos[0, 4], torch.ones(8))


def test_bad_augmentation_is_rejected():
    with pytest.raises(ValueError, match='rope_jitter_coords'):
        RopeDinoV3(16, jitter_coords=.5)
    with pytest.raises(TypeError, match='do not apply'):
        timm.create_model('vit_tiny_rope_dinov3', depth=1, rope_scaling='interp')
