import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import timm_pe  # noqa: F401  (registers the models)
from timm_pe.models.vit import VARIANTS, SIZES, checkpoint_filter_fn, convert_timm_rope_vit

from tests.helpers import unit_scale_attention

ALL_VITS = [f'vit_{size}_{enc}' for size in SIZES for enc in VARIANTS]
ROPE_VITS = [name for name in ALL_VITS if 'rope' in name]


def small(name, **kwargs):
    """The registered entrypoint at a test-friendly width (16 dims per head) and depth."""
    heads = SIZES[name.split('_')[1]]['num_heads']
    return timm.create_model(name, embed_dim=16 * heads, depth=2, **kwargs)


def test_every_variant_is_registered():
    assert set(ALL_VITS) <= set(timm.list_models())
    assert len(ALL_VITS) == 39


@pytest.mark.parametrize('name', ALL_VITS)
def test_forward_backward_at_several_resolutions(name):
    for size in [(224, 224), (96, 96), (64, 112)]:
        model = small(name, img_size=size, num_classes=5)
        out = model(torch.randn(2, 3, *size))
        assert out.shape == (2, 5)
        out.sum().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None for g in grads)
    model = small(name, dynamic_img_size=True, num_classes=5)
    for size in [(224, 224), (48, 80)]:
        assert model(torch.randn(1, 3, *size)).shape == (1, 5)


@pytest.mark.parametrize('name', ALL_VITS)
def test_features_only(name):
    model = small(name, features_only=True, out_indices=(0, 1))
    feats = model(torch.randn(1, 3, 224, 224))
    assert [f.shape for f in feats] == [(1, model.feature_info.channels()[0], 14, 14)] * 2


@pytest.mark.parametrize('name', ALL_VITS)
def test_safetensors_round_trip(name, tmp_path):
    model = small(name).eval()
    path = tmp_path / 'model.safetensors'
    save_file(model.state_dict(), path)
    clone = small(name).eval()
    clone.load_state_dict(load_file(path))
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(model(x), clone(x), atol=0, rtol=0)


@pytest.mark.parametrize('name', ['vit_tiny_ape', 'vit_tiny_rope_mixed_ape', 'vit_tiny_rpb', 'vit_tiny_alibi2d',
                                  'vit_tiny_lookhere', 'vit_tiny_alibi2d_sq', 'vit_tiny_rope_dinov3'])
def test_timm_model_contract(name):
    model = small(name, reg_tokens=2, global_pool='avg', drop_rate=.1, drop_path_rate=.1)
    x = torch.randn(2, 3, 224, 224)
    feats = model.forward_features(x)
    assert feats.shape == (2, 2 + 1 + 196, model.embed_dim)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.embed_dim)
    assert model.get_classifier() is model.head
    model.reset_classifier(7)
    assert model(x).shape == (2, 7)
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    model.set_grad_checkpointing(False)
    assert set(model.group_matcher()) == {'stem', 'blocks'}
    nwd = model.no_weight_decay()
    learned_pos = {n for n, _ in model.named_parameters() if 'pos_enc' in n or n == 'pos_embed'}
    assert learned_pos <= nwd
    final, inter = model.forward_intermediates(x, indices=2, output_fmt='NCHW')
    assert final.shape == feats.shape and [t.shape for t in inter] == [(2, model.embed_dim, 14, 14)] * 2
    inter = model.forward_intermediates(x, indices=[0], output_fmt='NLC', intermediates_only=True,
                                        return_prefix_tokens=True)
    assert inter[0][0].shape == (2, 196, model.embed_dim) and inter[0][1].shape == (2, 3, model.embed_dim)
    cfg = model.pretrained_cfg
    assert cfg['first_conv'] == 'patch_embed.proj' and cfg['classifier'] == 'head'


def test_no_class_token_and_avg_pool():
    model = small('vit_tiny_rope_axial', class_token=False, global_pool='avg')
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize('name', ['vit_tiny_ape', 'vit_tiny_rpb', 'vit_tiny_rope_axial', 'vit_tiny_sincos'])
def test_set_input_size(name):
    model = small(name)
    model.set_input_size(img_size=(96, 160))
    assert model(torch.randn(1, 3, 96, 160)).shape == (1, 1000)
    if name.endswith('ape'):
        assert model.pos_embed.shape[1] == 6 * 10
    if name.endswith('rpb'):
        assert model.blocks[0].attn.pos_enc.relative_position_bias_table.shape[0] == 11 * 19


def test_rope_fraction_is_honoured():
    model = small('vit_small_rope_axial', rope_fraction=.25)
    assert {blk.attn.pos_enc.rot_dim for blk in model.blocks} == {4}


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(TypeError):
        timm.create_model('vit_tiny_ape', depth=1, not_an_option=3)
    with pytest.raises(TypeError, match='do not apply to'):
        timm.create_model('vit_tiny_alibi2d', depth=1, rope_fraction=.5)
    with pytest.raises(ValueError, match='not a multiple of the patch size'):
        timm.create_model('vit_tiny_ape', depth=1, img_size=100)
    with pytest.raises(ValueError, match='rope_scaling'):
        timm.create_model('vit_tiny_rope_mixed', depth=1, rope_scaling='linear')
    model = small('vit_tiny_rope_axial', dynamic_img_size=True)
    with pytest.raises(AssertionError, match='divisible by patch size'):
        model(torch.randn(1, 3, 100, 96))
    with pytest.raises(AssertionError, match="doesn't match model"):
        small('vit_tiny_rope_axial')(torch.randn(1, 3, 96, 96))


def test_half_precision_keeps_float32_tables():
    model = small('vit_tiny_rope_mixed').to(torch.bfloat16)
    out = model(torch.randn(1, 3, 224, 224, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@pytest.mark.parametrize('name', ['vit_tiny_rope_mixed', 'vit_tiny_alibi2d', 'vit_tiny_rpb', 'vit_tiny_sincos',
                                  'vit_tiny_lookhere', 'vit_tiny_alibi2d_sq', 'vit_tiny_rope_dinov3'])
def test_compiles_in_one_graph_and_fx_traces(name):
    model = unit_scale_attention(small(name)).eval()
    x = torch.randn(1, 3, 224, 224)
    compiled = torch.compile(model, fullgraph=True, backend='eager')
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(compiled(x), expected)
        torch.testing.assert_close(traced(x), expected)
    assert any(n.target.__name__ == 'apply_rope' for n in traced.graph.nodes if n.op == 'call_function') \
        == ('rope' in name)


PEERS = [
    ('vit_small_patch16_rope_224', 'vit_small_rope_axial'),
    ('vit_small_patch16_rope_mixed_224', 'vit_small_rope_mixed'),
    ('vit_small_patch16_rope_ape_224', 'vit_small_rope_axial_ape'),
    ('vit_small_patch16_rope_mixed_ape_224', 'vit_small_rope_mixed_ape'),
    ('vit_base_patch16_rope_mixed_224', 'vit_base_rope_mixed'),
    ('deit3_small_patch16_224', 'vit_small_ape'),
    ('deit3_base_patch16_224', 'vit_base_ape'),
]


def randomized_peer(peer, size):
    torch.manual_seed(0)
    model = timm.create_model(peer, img_size=size, depth=2).eval()
    with torch.no_grad():
        # full layer scale and large q/k weights give peaked attention, so a position mismatch shows
        for name, p in model.named_parameters():
            if 'gamma' in name:
                p.fill_(1.)
            elif 'qkv.weight' in name:
                p.normal_(0, .5)
            else:
                p.normal_(0, .05)
    return model


@pytest.mark.parametrize('peer,ours', PEERS)
@pytest.mark.parametrize('size', [(224, 224), (160, 256)])
def test_matches_timm_peer_after_conversion(peer, ours, size):
    ref = randomized_peer(peer, size)
    model = timm.create_model(ours, img_size=size, depth=2).eval()
    model.load_state_dict(checkpoint_filter_fn(ref.state_dict(), model))
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        diff = (ref(x) - model(x)).abs().max().item()
    assert diff < 1e-4


def test_conversion_is_what_makes_rope_match():
    """Negative control: skipping the interleaved-to-half reordering must break parity."""
    ref = randomized_peer('vit_small_patch16_rope_224', (224, 224))
    model = timm.create_model('vit_small_rope_axial', depth=2).eval()
    sd = convert_timm_rope_vit(ref.state_dict(), timm.create_model('vit_small_nope', depth=2))
    model.load_state_dict(sd)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ref(x) - model(x)).abs().max().item() > 1e-3


def test_rope_vit_weights_need_full_rotation():
    ref = timm.create_model('vit_small_patch16_rope_224', depth=1)
    model = timm.create_model('vit_small_rope_axial', depth=1, rope_fraction=.5)
    with pytest.raises(ValueError, match='rope_fraction=1'):
        checkpoint_filter_fn(ref.state_dict(), model)


def test_filter_resamples_ape_and_rpb_for_another_size():
    for name in ['vit_tiny_ape', 'vit_tiny_rpb']:
        trained = small(name)
        model = small(name, img_size=320)
        model.load_state_dict(checkpoint_filter_fn(trained.state_dict(), model))
        assert model(torch.randn(1, 3, 320, 320)).shape == (1, 1000)
