import contextlib
import copy
import math

import pytest
import torch

from timm_pe.layers.rope_axial import axial_frequencies
from timm_pe.layers import RopeAxial, RopeMixed, init_mixed_frequencies, rope_rot_dim
from timm_pe.ops import apply_rope
from timm_pe.ops.rope_torch import rope_qkv_projected

from tests.helpers import projection_called, unit_scale_attention

CPU = torch.device('cpu')


def rotated_scores(enc, grid, head_dim, num_heads=2, num_prefix_tokens=0):
    """q.k scores when every token carries the same q and k vectors: only positions differ."""
    torch.manual_seed(0)
    n = grid[0] * grid[1] + num_prefix_tokens
    qkv = torch.randn(1, 1, 3, num_heads, head_dim, dtype=torch.float64).float().expand(1, n, 3, num_heads, head_dim)
    cos, sin = enc.tables(grid, CPU)
    q, k, _ = apply_rope(qkv.contiguous(), cos, sin, num_prefix_tokens)
    return q @ k.transpose(-1, -2)


@pytest.mark.parametrize('make_enc', [
    lambda: RopeAxial(16, theta=100.),
    lambda: RopeMixed(16, num_heads=2, theta=10.),
    lambda: RopeAxial(16, rope_fraction=.5),
])
def test_scores_depend_only_on_relative_offsets(make_enc):
    grid = (4, 5)
    scores = rotated_scores(make_enc(), grid, head_dim=16)[0]
    ys, xs = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing='ij')
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    by_offset = {}
    for i in range(len(xs)):
        for j in range(len(xs)):
            offset = (int(ys[i] - ys[j]), int(xs[i] - xs[j]))
            ref = by_offset.setdefault(offset, scores[:, i, j])
            torch.testing.assert_close(scores[:, i, j], ref, atol=1e-4, rtol=1e-4)
    # and the score really changes with the offset
    assert (by_offset[(0, 1)] - by_offset[(0, 0)]).abs().max() > 1e-2


def test_rotation_preserves_norms():
    qkv = torch.randn(2, 21, 3, 2, 16)
    cos, sin = RopeMixed(16, 2).tables((4, 5), CPU)
    q, k, _ = apply_rope(qkv, cos, sin, num_prefix_tokens=1)
    torch.testing.assert_close(q.norm(dim=-1), qkv[:, :, 0].transpose(1, 2).norm(dim=-1))
    torch.testing.assert_close(k.norm(dim=-1), qkv[:, :, 1].transpose(1, 2).norm(dim=-1))


def test_partial_rope_leaves_other_dims_and_prefix_untouched():
    enc = RopeAxial(32, rope_fraction=.25)
    assert enc.rot_dim == 8
    qkv = torch.randn(2, 13, 3, 2, 32)
    q, k, v = apply_rope(qkv, *enc.tables((3, 4), CPU), num_prefix_tokens=1)
    q_in = qkv[:, :, 0].transpose(1, 2)
    assert torch.equal(q[..., 8:], q_in[..., 8:])
    assert torch.equal(q[:, :, :1], q_in[:, :, :1])
    assert not torch.allclose(q[:, :, 2:, :8], q_in[:, :, 2:, :8])
    assert v.data_ptr() == qkv[:, :, 2].data_ptr()


def test_axial_angles_follow_reference_formula():
    enc = RopeAxial(16, theta=100.)
    cos, sin = enc.tables((3, 5), CPU)
    angles = torch.atan2(sin, cos)[0]
    f = 100. ** (-4 * torch.arange(4) / 16)
    token = 1 * 5 + 3  # y = 1, x = 3
    expected = torch.cat([3 * f, 1 * f])
    torch.testing.assert_close(angles[token], torch.atan2(expected.sin(), expected.cos()))


def test_mixed_init_matches_reference_formula():
    torch.manual_seed(0)
    freqs = init_mixed_frequencies(num_heads=3, rot_dim=16, theta=10.)
    assert freqs.shape == (2, 3, 8)
    mag = 10. ** (-4 * torch.arange(4) / 16)
    fx, fy = freqs
    torch.testing.assert_close(torch.hypot(fx[:, :4], fy[:, :4]), mag.expand(3, 4))
    angle = torch.atan2(fy[:, 0], fx[:, 0])
    torch.testing.assert_close(torch.atan2(fy[:, 4], fx[:, 4]), torch.remainder(angle + math.pi / 2 + math.pi, 2 * math.pi) - math.pi)


def test_mixed_tables_are_differentiable():
    enc = RopeMixed(16, 2)
    cos, sin = enc.tables((2, 3), CPU)
    (cos.sum() + sin.sum()).backward()
    assert enc.freqs.grad is not None and enc.freqs.grad.abs().sum() > 0


@pytest.mark.parametrize('fraction,expected', [(1., 64), (.5, 32), (.25, 16), (.01, 4), (.3, 20)])
def test_rot_dim_rounding(fraction, expected):
    assert rope_rot_dim(64, fraction) == expected


def test_bad_rope_options_are_rejected():
    with pytest.raises(ValueError, match='rope_fraction'):
        rope_rot_dim(64, 0.)
    with pytest.raises(ValueError, match="allowed"):
        RopeAxial(16, rope_scaling='yarn')


def test_interp_squeezes_positions_onto_training_grid():
    train = RopeAxial(16, rope_scaling='interp', train_grid=(4, 4))
    cos, sin = train.tables((8, 8), CPU)
    plain = RopeAxial(16)
    angles = torch.atan2(sin, cos)[0]
    # token (y=2, x=6) on the 8x8 grid sits at (1, 3) of the 4x4 training grid
    ref_cos, ref_sin = plain.tables((4, 4), CPU)
    torch.testing.assert_close(angles[2 * 8 + 6], torch.atan2(ref_sin, ref_cos)[0, 1 * 4 + 3])
    # at the training grid it is a no-op
    torch.testing.assert_close(train.tables((4, 4), CPU)[0], ref_cos)


def test_ntk_slows_the_slowest_band_by_the_growth_factor():
    enc = RopeAxial(16, rope_scaling='ntk', train_grid=(4, 4))
    cos, sin = enc.tables((8, 8), CPU)
    angles = torch.atan2(sin, cos)[0]
    f = axial_frequencies(enc.rot_dim, enc.theta)
    x1 = 1  # token 1 is at x = 1
    torch.testing.assert_close(angles[x1, 0], f[0])
    torch.testing.assert_close(angles[x1, 3], f[3] / 2)


def test_mixed_inference_tables_are_kept_until_the_frequencies_change():
    enc = RopeMixed(16, num_heads=2)
    with torch.no_grad():
        first = enc.tables((3, 4), CPU)
        assert enc.tables((3, 4), CPU)[0] is first[0] and first[0].grad_fn is None
        enc.freqs.mul_(2)  # an optimizer step or a loaded state dict changes them in place
        enc.tables((3, 4), CPU)
        enc.freqs.data.add_(1)  # as EMA teachers update: bumps no version counter, and is seen all the same
        second = enc.tables((3, 4), CPU)
    trained = enc.tables((3, 4), CPU)  # gradients reach the frequencies: rebuilt, differentiable
    assert trained[0].grad_fn is not None
    for old, kept, fresh in zip(first, second, trained):
        assert not torch.equal(kept, old) and torch.equal(kept, fresh)


def _tiny_rope_vit(name, **kwargs):
    import timm
    import timm_pe  # noqa: F401
    torch.manual_seed(0)
    model = timm.create_model(name, **{'depth': 1, 'embed_dim': 32, 'num_heads': 2, 'img_size': 64, **kwargs})
    return unit_scale_attention(model).eval()


def _count_folds(monkeypatch):
    from timm_pe.layers import attention
    folded = []
    monkeypatch.setattr(attention, 'rope_qkv_projected', lambda *args: folded.append(1) or rope_qkv_projected(*args))
    return folded


@pytest.mark.parametrize('name', ['vit_tiny_rope_axial', 'vit_tiny_rope_mixed'])
def test_rotation_folds_into_the_projection_unless_it_is_observed(name, monkeypatch):
    """float32 q and k on the CPU come from the pair-ordered projection copy, with or without gradients; a
    hook on qkv (forward or pre-hook) gets its call, and the output as the projection wrote it."""
    from timm_pe.layers import attention
    folded = _count_folds(monkeypatch)
    model = _tiny_rope_vit(name)
    qkv = model.blocks[0].attn.qkv
    x = torch.randn(2, 3, 64, 64)
    with projection_called(model):
        expected = model.forward_features(x)
    assert attention.unobserved(qkv) and not folded
    torch.testing.assert_close(model.forward_features(x), expected)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), expected)
    with torch.inference_mode():
        torch.testing.assert_close(model.forward_features(x), expected)
    assert folded == [1, 1, 1]
    with torch.no_grad():  # elsewhere than the CPU the projection is called
        assert copy.deepcopy(model).to('meta')(x.to('meta')).device.type == 'meta' and folded == [1, 1, 1]
    for register in (qkv.register_forward_hook, qkv.register_forward_pre_hook):
        seen = []
        handle = register(lambda module, args, *out, seen=seen: seen.append([t.clone() for t in out] or args))
        assert not attention.unobserved(qkv)
        with torch.no_grad():
            torch.testing.assert_close(model.forward_features(x), expected)
        handle.remove()
        assert len(seen) == 1 and folded == [1, 1, 1]
    seen_out = []
    handle = qkv.register_forward_hook(lambda module, args, out: seen_out.append((out, out.clone())))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert torch.equal(*seen_out[0])  # rotated in place only where nobody holds the projection
    for register in (torch.nn.modules.module.register_module_forward_hook,
                     torch.nn.modules.module.register_module_forward_pre_hook):
        handle = register(lambda *args: None)
        try:
            assert not attention.unobserved(qkv)
        finally:
            handle.remove()


@pytest.mark.parametrize('name,kwargs', [('vit_tiny_rope_axial', {}),
                                         ('vit_tiny_rope_mixed', {'rope_fraction': 0.5, 'reg_tokens': 2})])
def test_training_through_the_folded_projection_gives_the_rotate_half_gradients(name, kwargs, monkeypatch):
    """A training step folds too (the weight gathered into pair order, the rotation and its backward complex
    multiplies), and where it does not fold ``apply_rope`` rotates the projection's output in place (the table
    gradients then taken from the rotated q and k): either way loss and every gradient, RoPE-Mixed's frequencies
    included, are those of rotating a copy of the output of a projection a hook sees."""
    from timm_pe.layers import attention
    folded = _count_folds(monkeypatch)
    model, x = _tiny_rope_vit(name, depth=2, **kwargs).train(), torch.randn(2, 3, 64, 64)
    grads = []
    for path in ('hooked', 'folded', 'in_place'):
        model.zero_grad()
        if path == 'in_place':
            monkeypatch.setattr(attention, 'projected_rope_applies', lambda *args: False)
        with projection_called(model) if path == 'hooked' else contextlib.nullcontext():
            model(x).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert folded == [1, 1]
    assert grads[0].keys() == grads[1].keys() == grads[2].keys()
    assert any('freqs' in n for n in grads[0]) == (name.endswith('mixed'))
    for other in grads[1:]:
        for n in grads[0]:
            torch.testing.assert_close(other[n], grads[0][n], atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize('reentrant', [False, True])
@pytest.mark.parametrize('name', ['vit_tiny_rope_axial', 'vit_tiny_rope_mixed'])
def test_folded_training_under_gradient_checkpointing_gives_the_same_gradients(name, reentrant, monkeypatch):
    """timm's gradient checkpointing (either form) reruns each block's forward in the backward: the folded
    node, which rotates the fresh projection output in place and keeps the rotated q and k, gives the same
    gradients."""
    from timm.layers import set_reentrant_ckpt, use_reentrant_ckpt
    folded = _count_folds(monkeypatch)
    model, x = _tiny_rope_vit(name, depth=2).train(), torch.randn(2, 3, 64, 64)
    grads, default = [], use_reentrant_ckpt()
    set_reentrant_ckpt(reentrant)
    try:
        for checkpointed in (False, True):
            model.zero_grad()
            model.set_grad_checkpointing(checkpointed)
            model(x).square().mean().backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    finally:
        set_reentrant_ckpt(default)
    assert len(folded) == 6  # two blocks, then two more and their reruns
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-5, msg=n)


def test_folded_training_keeps_no_gathered_weight_for_the_backward():
    """Autograd keeps the projection's own weight for a folded step, not its pair-ordered copy (which would
    stay alive from forward to backward in every layer)."""
    model = _tiny_rope_vit('vit_tiny_rope_axial').train()
    weight = model.blocks[0].attn.qkv.weight
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        model(torch.randn(2, 3, 64, 64)).sum().backward()
    weight_sized = [t for t in saved if t.numel() == weight.numel()]
    assert weight_sized and all(t.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()
                                for t in weight_sized)


@pytest.mark.parametrize('name', ['vit_tiny_rope_axial', 'vit_tiny_rope_mixed'])
def test_training_keeps_no_rotated_copy_of_q_and_k(name, monkeypatch):
    """A training step rotates q and k in the projection's own output, which attention keeps anyway, whether
    the rotation is folded into the projection or ``apply_rope`` rotates its output: autograd keeps what the
    same model with no encoding keeps, plus less than one q and k buffer (the tables and the row order). A
    projection a hook sees keeps its output as it was, and a rotated copy of q and k besides."""
    from timm_pe.layers import attention
    from timm_pe.tools.bench import saved_for_backward_mb
    x = torch.randn(2, 3, 64, 64)
    saved = {}
    for model_name in ('vit_tiny_nope', name):
        model = _tiny_rope_vit(model_name).train()
        saved[model_name] = 2 ** 20 * saved_for_backward_mb(model, lambda: model(x))
        with projection_called(model):
            saved['hooked'] = 2 ** 20 * saved_for_backward_mb(model, lambda: model(x))
    monkeypatch.setattr(attention, 'projected_rope_applies', lambda *args: False)
    saved['unfolded'] = 2 ** 20 * saved_for_backward_mb(model, lambda: model(x))
    tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    qk_bytes = 4 * x.shape[0] * tokens * 2 * model.embed_dim  # float32 q and k of the one layer
    nope = saved['vit_tiny_nope']
    assert nope <= saved[name] < nope + qk_bytes <= saved['hooked']
    assert nope <= saved['unfolded'] < nope + qk_bytes


def test_folded_projection_sees_every_weight_change_and_leaves_other_projections_to_their_call(monkeypatch):
    """The pair-ordered copy is made per call, so a write through ``.data`` (which bumps no version counter,
    as many EMA teachers update) is seen at once, and a model built under inference_mode folds too. A
    LoRA-like nn.Linear subclass, a ``forward`` replaced on the instance, bfloat16 and too few tokens keep
    the projection's own call."""
    folded = _count_folds(monkeypatch)
    model = _tiny_rope_vit('vit_tiny_rope_axial')
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model.forward_features(x)
        model.blocks[0].attn.qkv.weight.data.mul_(2)
        after = model.forward_features(x)
    assert folded == [1, 1] and not torch.allclose(before, after)
    with projection_called(model):
        torch.testing.assert_close(after, model.forward_features(x))
    with projection_called(_tiny_rope_vit('vit_tiny_rope_axial')) as fresh:
        expected = fresh.forward_features(x)
    with torch.inference_mode():
        torch.testing.assert_close(_tiny_rope_vit('vit_tiny_rope_axial').forward_features(x), expected)
    assert folded == [1, 1, 1]

    calls = []

    class Adapted(torch.nn.Linear):
        def forward(self, x):
            calls.append('subclass')
            return super().forward(x)

    def adapted(qkv):
        module = Adapted(qkv.in_features, qkv.out_features)
        module.load_state_dict(qkv.state_dict())
        return module

    def replaced_forward(qkv):
        qkv.forward = lambda t, forward=qkv.forward: calls.append('instance') or forward(t)
        return qkv

    for change in (adapted, replaced_forward):
        model = _tiny_rope_vit('vit_tiny_rope_axial')
        model.blocks[0].attn.qkv = change(model.blocks[0].attn.qkv)
        with torch.no_grad():
            torch.testing.assert_close(model.forward_features(x), expected)
    model = _tiny_rope_vit('vit_tiny_rope_axial').bfloat16()
    with torch.no_grad():
        out = model.forward_features(x.bfloat16())
    torch.testing.assert_close(out.float(), model.forward_features(x.bfloat16()).float(), atol=0, rtol=0)
    model, one = _tiny_rope_vit('vit_tiny_rope_axial', embed_dim=64), x[:1]  # 17 tokens, under 64 / 2
    with projection_called(model):
        expected = model.forward_features(one)
    torch.testing.assert_close(model.forward_features(one), expected)
    assert calls == ['subclass', 'instance'] and folded == [1, 1, 1]
