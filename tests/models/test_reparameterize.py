"""``reparameterize()`` through timm's ``reparameterize_model``: rotary layers keep their qkv rows in pair order,
give the plain model's outputs on every path, and save and load checkpoints in the usual order."""
import contextlib

import pytest
import timm
import torch
from timm.utils import reparameterize_model

import timm_pe  # noqa: F401  (registers the models)
from timm_pe.layers import PositionalAttention

from tests.helpers import projection_called, unit_scale_attention

pytestmark = pytest.mark.usefixtures('one_thread')

ROTARY = {
    'vit_tiny_rope_axial': dict(depth=2, img_size=64),
    'vit_tiny_rope_mixed': dict(depth=2, img_size=64, rope_fraction=0.5, reg_tokens=2),
    'vit_tiny_rope_dinov3': dict(depth=2, img_size=64),
    'swin_tiny_rope_mixed': dict(depths=(1, 1, 1, 1), embed_dim=16, num_heads=(1, 1, 2, 2), img_size=64,
                                 window_size=2),
}


def build(name):
    torch.manual_seed(0)
    return unit_scale_attention(timm.create_model(name, **ROTARY[name]).eval())


def pair_ordered(model):
    return [m.qkv_pair_order for m in model.modules() if isinstance(m, PositionalAttention)]


@pytest.mark.parametrize('name', ROTARY)
def test_reparameterized_model_gives_the_plain_outputs_and_usual_checkpoints(name):
    model, x = build(name), torch.randn(2, 3, 64, 64)
    with torch.no_grad(), projection_called(model):  # rotate-half, by apply_rope
        expected = model(x)
    reparam = reparameterize_model(model)  # a copy, as timm's validate.py --reparam makes it
    assert all(pair_ordered(reparam)) and not any(pair_ordered(model))
    with torch.no_grad():
        torch.testing.assert_close(reparam(x), expected, atol=1e-5, rtol=1e-5)
        hooked = reparameterize_model(model)  # a hook sees the projection's output, which stays as it was
        seen = []
        next(m for m in hooked.modules() if isinstance(m, PositionalAttention)).qkv.register_forward_hook(
            lambda module, args, out: seen.append((out, out.clone())))
        torch.testing.assert_close(hooked(x), expected, atol=1e-5, rtol=1e-5)
        assert len(seen) == 1 and torch.equal(*seen[0])

    # checkpoints hold the usual order both ways
    plain_sd, reparam_sd = model.state_dict(), reparam.state_dict()
    assert plain_sd.keys() == reparam_sd.keys() and all(torch.equal(plain_sd[k], reparam_sd[k]) for k in plain_sd)
    fresh = build(name)
    fresh.load_state_dict(reparam_sd)
    later = reparameterize_model(build(name))
    later.load_state_dict(plain_sd)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(later(x), expected, atol=1e-5, rtol=1e-5)

    # training and bf16 autocast (complex multiplies forward and back, in float32): same loss, same gradients
    # outside the reordered rows, as the plain model's rotate-half path
    model.train(), reparam.train()
    losses = []
    for m in (model, reparam):
        torch.manual_seed(1)  # Swin's stochastic depth draws alike
        with projection_called(m) if m is model else contextlib.nullcontext():
            loss = m(x).square().mean()
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(reparam.patch_embed.proj.weight.grad, model.patch_embed.proj.weight.grad,
                               atol=1e-5, rtol=1e-4)
    model.eval(), reparam.eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        torch.testing.assert_close(reparam(x), model(x), atol=5e-2, rtol=5e-2)


def test_reparameterize_twice_is_once_and_leaves_other_encodings_alone():
    model = build('vit_tiny_rope_axial')
    once = reparameterize_model(model)
    twice = reparameterize_model(once)
    assert all(torch.equal(a, b) for a, b in zip(once.parameters(), twice.parameters()))
    for name in ('vit_tiny_ape', 'vit_tiny_alibi2d', 'vit_tiny_rpb'):
        torch.manual_seed(0)
        plain = timm.create_model(name, depth=1, img_size=64)
        reparam = reparameterize_model(plain)
        assert not any(pair_ordered(reparam))
        assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), reparam.parameters()))


@pytest.mark.parametrize('name', ['vit_tiny_rope_axial', 'vit_tiny_rope_mixed'])
def test_reparameterized_model_scripts_traces_and_exports(name):
    model, x = build(name), torch.randn(2, 3, 64, 64)
    reparam = reparameterize_model(model)
    with torch.no_grad(), projection_called(model):
        expected = model(x)
        torch.testing.assert_close(torch.jit.script(reparam)(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.fx.symbolic_trace(reparam)(x), expected, atol=1e-5, rtol=1e-5)
        exported = torch.export.export(reparam, (x,))
        torch.testing.assert_close(exported.module()(x), expected, atol=1e-5, rtol=1e-5)


def test_encoding_cannot_change_under_a_reparameterized_layer():
    attn = next(m for m in reparameterize_model(build('vit_tiny_rope_axial')).modules()
                if isinstance(m, PositionalAttention))
    with pytest.raises(ValueError, match='reparameterized'):
        attn.set_position_encoding(None)
