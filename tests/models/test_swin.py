import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import group_parameters

import timm_pe  # noqa: F401  (registers the models)
from timm_pe.layers import relative_position_index, resize_rpb_table
from timm_pe.models.swin import ATTN_POS, SIZES, checkpoint_filter_fn

ALL_SWINS = [f'swin_{size}_{enc}' for size in SIZES for enc in ATTN_POS]
# Swin-T layout at a test-friendly width: head dims 16, 16, 32, 32; two blocks per stage, so every stage but
# the last (whose grid is one window at 224) has a shifted block.
SMALL = dict(embed_dim=16, num_heads=(1, 2, 2, 4), depths=(2, 2, 2, 2))


pytestmark = pytest.mark.usefixtures('one_thread')


def small(name, **kwargs):
    return timm.create_model(name, **dict(SMALL, **kwargs))


def windows(model):
    return [stage.blocks[0].window_size for stage in model.layers]


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Every call into SDPA as (q, k, attn_mask)."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        calls.append((q.detach(), k.detach(), None if attn_mask is None else attn_mask.detach()))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, 'scaled_dot_product_attention', spy)
    return calls


def test_every_variant_is_registered_and_swin_rope_is_tiny_rope_mixed():
    assert set(ALL_SWINS + ['swin_rope']) <= set(timm.list_models('swin_*'))
    model = timm.create_model('swin_rope', device='meta')
    assert model.pretrained_cfg['architecture'] == 'swin_tiny_rope_mixed'
    ref = timm.create_model('swin_tiny_patch4_window7_224', device='meta')
    ours = {k: v.shape for k, v in model.state_dict().items() if '.pos_enc.' not in k}
    assert ours == {k: v.shape for k, v in ref.state_dict().items() if 'relative_position_bias_table' not in k}
    encodings = [blk.attn.pos_enc for stage in model.layers for blk in stage.blocks]
    assert len(encodings) == 12 and all(enc.theta == 10. and enc.rot_dim == 32 for enc in encodings)
    axial = timm.create_model('swin_base_rope_axial', device='meta').layers[0].blocks[0].attn.pos_enc
    assert axial.theta == 50.


@pytest.mark.parametrize("enc", ATTN_POS)
def test_timm_model_contract(enc):
    model = small(f'swin_tiny_{enc}', drop_path_rate=.1)
    x = torch.randn(2, 3, 224, 224)
    feats = model.forward_features(x)
    assert feats.shape == (2, 7, 7, 128)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 128)
    assert model.get_classifier() is model.head.fc
    model.reset_classifier(7)
    assert model(x).shape == (2, 7)
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    model.set_grad_checkpointing(False)

    learned_pos = {n for n, _ in model.named_parameters() if 'relative_position_bias_table' in n or '.pos_enc.' in n}
    assert bool(learned_pos) == (enc in ('rpb', 'rope_mixed'))
    assert model.no_weight_decay() == learned_pos
    group_of = {n: group for group, names in group_parameters(model, model.group_matcher()).items() for n in names}
    assert all(group_of[n] == group_of[n.split('.attn.')[0] + '.attn.qkv.weight'] for n in learned_pos)

    model.eval()  # no drop path: intermediates comparable with forward_features
    feats = model.forward_features(x)
    final, inter = model.forward_intermediates(x)
    torch.testing.assert_close(final, feats)
    assert [t.shape for t in inter] == [(2, 16, 56, 56), (2, 32, 28, 28), (2, 64, 14, 14), (2, 128, 7, 7)]
    nhwc = model.forward_intermediates(x, indices=[1], output_fmt='NHWC', intermediates_only=True)
    torch.testing.assert_close(nhwc[0], inter[1].permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match='output_fmt'):
        model.forward_intermediates(x, output_fmt='NLC')

    cfg = model.pretrained_cfg
    assert isinstance(model.get_submodule(cfg['first_conv']), torch.nn.Conv2d)
    assert isinstance(model.get_submodule(cfg['classifier']), torch.nn.Linear)


def test_features_only_gives_the_four_stage_maps_nhwc_like_timm():
    image = torch.randn(1, 3, 224, 224)
    model = small('swin_tiny_rope_mixed', features_only=True)
    ref = timm.create_model('swin_tiny_patch4_window7_224', features_only=True, **SMALL)
    assert model.output_fmt == ref.output_fmt == 'NHWC'
    assert model.feature_info.channels() == ref.feature_info.channels() == [16, 32, 64, 128]
    assert model.feature_info.reduction() == ref.feature_info.reduction()
    assert [f.shape for f in model(image)] == [f.shape for f in ref(image)] == \
        [(1, 56, 56, 16), (1, 28, 28, 32), (1, 14, 14, 64), (1, 7, 7, 128)]
    getter = small('swin_tiny_rope_mixed', features_only=True, feature_cls='getter', out_indices=(1, 3))
    assert [f.shape for f in getter(image)] == [(1, 32, 28, 28), (1, 128, 7, 7)]


@pytest.mark.parametrize("enc", ATTN_POS)
def test_forward_backward_at_several_resolutions(enc):
    for size, window in [((224, 224), (7, 7)), ((96, 96), (3, 3)), ((160, 224), (5, 7))]:
        model = small(f'swin_tiny_{enc}', img_size=size, num_classes=5)
        assert windows(model) == [window] * 4
        out = model(torch.randn(1, 3, *size))
        assert out.shape == (1, 5)
        out.sum().backward()
        assert all(p.grad is not None for p in model.parameters())


def test_window_follows_the_image_size_unless_fixed():
    model = small('swin_tiny_rpb', img_size=384)
    assert windows(model) == [(12, 12)] * 4
    assert model.layers[0].blocks[0].attn.pos_enc.relative_position_bias_table.shape == (23 * 23, 1)

    fixed = small('swin_tiny_rpb', img_size=448, window_size=7)
    assert windows(fixed) == [(7, 7)] * 4
    assert [stage.blocks[1].shift_size for stage in fixed.layers] == [(3, 3)] * 4
    with torch.no_grad():
        assert fixed(torch.randn(1, 3, 448, 448)).shape == (1, 1000)


@pytest.mark.parametrize('enc', ['rpb', 'rope_axial'])
@torch.no_grad()
def test_set_input_size_scales_or_fixes_the_windows(enc):
    model = small(f'swin_tiny_{enc}')
    model.set_input_size(img_size=384)
    assert windows(model) == [(12, 12)] * 4
    assert model(torch.randn(1, 3, 384, 384)).shape == (1, 1000)
    model.set_input_size(img_size=448, window_size=7)
    assert windows(model) == [(7, 7)] * 4
    assert model(torch.randn(1, 3, 448, 448)).shape == (1, 1000)
    if enc == 'rpb':
        assert model.layers[0].blocks[0].attn.pos_enc.relative_position_bias_table.shape == (13 * 13, 1)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(TypeError):
        small('swin_tiny_rope_axial', not_an_option=3)
    for enc in ['rpb', 'alibi2d']:
        with pytest.raises(TypeError, match='do not apply to'):
            small(f'swin_tiny_{enc}', rope_fraction=.5)
    with pytest.raises(ValueError, match='rope_scaling'):
        small('swin_tiny_rope_mixed', rope_scaling='linear')
    with pytest.raises(ValueError, match='attn_pos'):
        timm.create_model('swin_tiny_rpb', attn_pos='ape')
    with pytest.raises(ValueError, match='not a multiple of 32x32'):
        small('swin_tiny_rpb', img_size=200)
    with pytest.raises(ValueError, match='do not tile'):
        small('swin_tiny_rope_axial', img_size=384, window_size=7)

    model = small('swin_tiny_rpb')
    table = model.layers[0].blocks[0].attn.pos_enc.relative_position_bias_table.clone()
    for kwargs, message in [(dict(img_size=200), 'not a multiple'), (dict(img_size=384, window_size=7), 'do not tile')]:
        with pytest.raises(ValueError, match=message):
            model.set_input_size(**kwargs)
    assert model.patch_embed.img_size == (224, 224) and windows(model) == [(7, 7)] * 4
    torch.testing.assert_close(model.layers[0].blocks[0].attn.pos_enc.relative_position_bias_table, table)


def test_rope_options():
    model = small('swin_tiny_rope_axial', rope_fraction=.5, rope_theta=100.)
    assert [stage.blocks[0].attn.pos_enc.rot_dim for stage in model.layers] == [8, 8, 16, 16]
    assert model.layers[0].blocks[0].attn.pos_enc.theta == 100.
    model = small('swin_tiny_rope_mixed', img_size=384, rope_scaling='interp', rope_train_img_size=224)
    assert windows(model) == [(12, 12)] * 4
    assert {blk.attn.pos_enc.train_grid for stage in model.layers for blk in stage.blocks} == {(7, 7)}
    with torch.no_grad():
        assert model(torch.randn(1, 3, 384, 384)).shape == (1, 1000)


@pytest.mark.parametrize('enc', ['rope_axial', 'rope_mixed'])
def test_rope_logits_depend_only_on_in_window_offsets(enc, sdpa_calls):
    attn = small(f'swin_tiny_{enc}').layers[2].blocks[1].attn
    window = attn.window_size
    # one token repeated: before rotation every q (and every k) is the same, so only positions tell them apart
    x = torch.randn(1, 1, attn.qkv.in_features).expand(2, window[0] * window[1], -1)
    with torch.no_grad():
        attn(x)
    q, k, mask = sdpa_calls[-1]
    assert mask is None
    logits = q @ k.transpose(-1, -2)
    offset = relative_position_index(window)
    for value in offset.unique():
        same_offset = logits[..., offset == value]
        assert (same_offset - same_offset[..., :1]).abs().max() < 1e-4
    assert logits.std() > 1e-2


@pytest.mark.parametrize('enc', ['rope_axial', 'rope_mixed'])
def test_rope_coordinates_are_window_local_in_shifted_and_unshifted_blocks(enc, sdpa_calls):
    """An input repeating with the window period gives every window the same content, also after the shift;
    window-local coordinates then give every window the same rotated q and k."""
    stage = small(f'swin_tiny_{enc}').layers[0]
    tile = torch.randn(1, 7, 7, 16)
    x = tile.repeat(1, 8, 8, 1)
    with torch.no_grad():
        for block in stage.blocks:
            block(x)
    (q0, k0, mask0), (q1, k1, mask1) = sdpa_calls
    for q, k in [(q0, k0), (q1, k1)]:
        assert q.shape[0] == 64
        torch.testing.assert_close(q, q[:1].expand_as(q))
        torch.testing.assert_close(k, k[:1].expand_as(k))
    assert mask0 is None and mask1 is not None


def assert_masks_are_timms(model, ref):
    blocks = [blk for stage in model.layers for blk in stage.blocks]
    ref_blocks = [blk for stage in ref.layers for blk in stage.blocks]
    for blk, ref_blk in zip(blocks, ref_blocks):
        assert blk.shift_size == ref_blk.shift_size and blk.window_size == ref_blk.window_size
        if ref_blk.attn_mask is None:
            assert blk.attn_mask is None
        else:
            assert torch.equal(blk.attn_mask, ref_blk.attn_mask)
    return blocks


@pytest.mark.parametrize('enc', ['rpb', 'rope_mixed'])
def test_shift_masks_are_timms(enc, sdpa_calls):
    """The masks are built by timm's own blocks: compared at 224 and after a resize, and as SDPA receives them."""
    model = small(f'swin_tiny_{enc}')
    ref = timm.create_model('swin_tiny_patch4_window7_224', **SMALL)
    blocks = assert_masks_are_timms(model, ref)
    with torch.no_grad():
        model(torch.randn(2, 3, 224, 224))
    # nothing in unshifted blocks of RoPE models, timm's mask for each image in shifted ones (plus the bias for RPB)
    assert len(sdpa_calls) == len(blocks)
    for (_, _, mask), blk in zip(sdpa_calls, blocks):
        if enc == 'rpb':
            mask = mask - blk.attn.pos_enc.bias(blk.attn.window_size, 0, mask.device)
        if blk.attn_mask is None:
            assert mask is None if enc != 'rpb' else not mask.any()
        else:
            num_windows, n, _ = blk.attn_mask.shape
            mask = mask.reshape(2, num_windows, -1, n, n)  # one mask for all heads (RoPE) or one per head (RPB)
            torch.testing.assert_close(mask, blk.attn_mask[None, :, None].expand_as(mask))
    model.set_input_size(img_size=384)
    ref.set_input_size(img_size=384)
    assert_masks_are_timms(model, ref)


def test_timm_swin_tiny_weights_give_identical_logits():
    torch.manual_seed(0)
    ref = timm.create_model('swin_tiny_patch4_window7_224', weight_init='skip').eval().double()
    with torch.no_grad():
        # strong position bias and peaked attention, so a bias or mask mismatch would show
        for name, p in ref.named_parameters():
            if 'relative_position_bias_table' in name:
                p.normal_(0, 1.)
            elif 'qkv.weight' in name:
                p.normal_(0, .15)
            elif p.dim() > 1:
                p.normal_(0, .05)
    model = timm.create_model('swin_tiny_rpb', weight_init='skip').eval().double()
    model.load_state_dict(ref.state_dict())
    with torch.no_grad():
        x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
        assert (ref(x) - model(x)).abs().max() < 1e-8
        ref.set_input_size(img_size=(256, 192))
        model.set_input_size(img_size=(256, 192))
        assert windows(model) == [(8, 6)] * 4
        # the tables are resized bicubically, as Swin's own repository does (timm interpolates on a geometric
        # grid); given the same tables, the non-square windows must give timm's logits
        for ref_stage, stage in zip(ref.layers, model.layers):
            for ref_block, block in zip(ref_stage.blocks, stage.blocks):
                ref_block.attn.relative_position_bias_table.copy_(block.attn.pos_enc.relative_position_bias_table)
        x = torch.randn(1, 3, 256, 192, dtype=torch.float64)
        expected = ref(x)
        assert (expected - model(x)).abs().max() < 1e-8
        for name, p in model.named_parameters():  # negative control: the bias is what the match rests on
            if 'relative_position_bias_table' in name:
                p.zero_()
        assert (expected - model(x)).abs().max() > 1e-3


def test_pretrained_224_checkpoint_loads_at_384(tmp_path):
    trained = timm.create_model('swin_tiny_patch4_window7_224', **SMALL)
    state_dict = dict(trained.state_dict())
    state_dict['layers.0.blocks.1.attn_mask'] = trained.layers[0].blocks[1].attn_mask  # as in Microsoft's files
    state_dict['layers.0.blocks.0.attn.relative_position_index'] = torch.zeros(49, 49, dtype=torch.long)
    path = tmp_path / 'swin_rpb.safetensors'
    save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
    model = small('swin_tiny_rpb', pretrained=True, img_size=384, pretrained_cfg_overlay=dict(file=str(path)))
    source = trained.layers[1].blocks[0].attn.relative_position_bias_table
    expected = resize_rpb_table(source, (7, 7), (12, 12))
    torch.testing.assert_close(model.layers[1].blocks[0].attn.pos_enc.relative_position_bias_table, expected)
    torch.testing.assert_close(model.layers[1].blocks[0].attn.qkv.weight, trained.layers[1].blocks[0].attn.qkv.weight)
    assert model(torch.randn(1, 3, 384, 384)).shape == (1, 1000)
    with pytest.raises(ValueError, match='relative position bias tables'):
        checkpoint_filter_fn(state_dict, small('swin_tiny_rope_axial'))

    rope = small('swin_tiny_rope_mixed')
    path = tmp_path / 'swin_rope.safetensors'
    save_file(rope.state_dict(), path)
    model = small('swin_tiny_rope_mixed', pretrained=True, img_size=384, rope_scaling='interp',
                  pretrained_cfg_overlay=dict(file=str(path)))
    attn = model.layers[0].blocks[0].attn
    assert attn.window_size == (12, 12) and attn.pos_enc.train_grid == (7, 7)
    torch.testing.assert_close(attn.pos_enc.freqs, rope.layers[0].blocks[0].attn.pos_enc.freqs)


def test_compiles_in_one_graph():
    model = small('swin_tiny_rope_mixed').eval()
    x = torch.randn(1, 3, 224, 224)
    compiled = torch.compile(model, fullgraph=True, backend='eager')
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
