"""What a checkpoint carries, walked the way users load it: train, save (safetensors), then load through
``load_state_dict``, ``timm.models.load_checkpoint`` (what ``validate.py --checkpoint`` calls), ``pretrained=True``
with a file, and ``checkpoint_path=``; compare logits with a model built knowing the answer."""
import warnings

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.models import load_checkpoint

import timm_pe  # noqa: F401
from timm_pe.layers import resize_rpb_table
from timm_pe.models.vit import checkpoint_filter_fn

from tests.helpers import unit_scale_attention

VIT = dict(depth=1, embed_dim=48, num_heads=2)  # heads of 24 dims
SWIN = dict(depths=(1, 1, 1, 1), embed_dim=16, num_heads=(1, 1, 2, 2))


def randomized(model):
    """A stand-in for a trained model: unit-scale attention (so positions move the logits), and every bias,
    norm and table moved off its init."""
    unit_scale_attention(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim <= 1 or 'table' in name:
                p.add_(torch.randn_like(p) * .1)
    return model.eval()


def logits(model, size):
    size = (size, size) if isinstance(size, int) else size
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.eval()(x)


def save(model, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def loading_paths(name, path, **kwargs):
    """The model built with ``kwargs`` and loaded from ``path`` by every public route."""
    by_state_dict = timm.create_model(name, **kwargs)
    by_state_dict.load_state_dict(timm.models.load_state_dict(str(path)))
    by_load_checkpoint = timm.create_model(name, **kwargs)
    load_checkpoint(by_load_checkpoint, str(path))
    by_pretrained = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    by_checkpoint_path = timm.create_model(name, checkpoint_path=str(path), **kwargs)
    return dict(load_state_dict=by_state_dict, load_checkpoint=by_load_checkpoint, pretrained=by_pretrained,
                checkpoint_path=by_checkpoint_path)


@pytest.mark.parametrize('name,kwargs,train,test', [
    ('vit_tiny_rope_axial', VIT, 64, 128),
    ('vit_tiny_rope_mixed', VIT, 64, 128),
    ('swin_tiny_rope_axial', SWIN, 64, 128),
])
@pytest.mark.parametrize('scaling', ['interp', 'ntk'])
def test_rope_scaling_follows_the_training_grid_on_every_loading_path(tmp_path, name, kwargs, train, test, scaling):
    trained = randomized(timm.create_model(name, img_size=train, **kwargs))
    path = save(trained, tmp_path / 'model.safetensors')
    reference = timm.create_model(name, img_size=test, rope_scaling=scaling, rope_train_img_size=train, **kwargs)
    reference.load_state_dict(trained.state_dict())
    plain = timm.create_model(name, img_size=test, **kwargs)
    plain.load_state_dict(trained.state_dict())
    expected = logits(reference, test)
    assert (expected - logits(plain, test)).abs().max() > 1e-2  # the scaling moves the logits, well past tolerance
    for route, model in loading_paths(name, path, img_size=test, rope_scaling=scaling, **kwargs).items():
        torch.testing.assert_close(logits(model, test), expected, msg=route)


def test_an_old_checkpoint_without_the_training_grid_warns_and_keeps_the_built_grid(tmp_path):
    trained = randomized(timm.create_model('vit_tiny_rope_axial', img_size=64, **VIT))
    old = {k: v for k, v in trained.state_dict().items() if not k.endswith('rope_train_grid')}
    model = timm.create_model('vit_tiny_rope_axial', img_size=128, rope_scaling='interp', **VIT)
    with pytest.warns(UserWarning, match='does not record the grid its RoPE layers were trained at'):
        model.load_state_dict(old)
    assert model.blocks[0].attn.pos_enc.train_grid == (8, 8)  # today's behaviour: the grid built at
    save_file(old, str(tmp_path / 'old.safetensors'))
    with pytest.warns(UserWarning, match='does not record'):
        timm.create_model('vit_tiny_rope_axial', pretrained=True, img_size=128, **VIT,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / 'old.safetensors')))


@pytest.mark.parametrize('name,kwargs,size', [
    ('vit_tiny_ape', VIT, 96),
    ('vit_tiny_rope_axial', VIT, (64, 96)),
    ('swin_tiny_rpb', SWIN, 128),
])
def test_data_config_feeds_the_size_the_model_is_built_at(tmp_path, name, kwargs, size):
    """The model card's 'another resolution' snippet: build at a size, transform an image with the
    model's data config, run the model."""
    path = save(timm.create_model(name, **kwargs), tmp_path / 'model.safetensors')
    model = timm.create_model(name, pretrained=True, img_size=size, pretrained_cfg_overlay=dict(file=str(path)),
                              **kwargs).eval()
    config = timm.data.resolve_model_data_config(model)
    assert config['input_size'][1:] == ((size, size) if isinstance(size, int) else size)
    transform = timm.data.create_transform(**config, is_training=False)
    image = Image.new('RGB', (300, 200), (120, 30, 200))
    with torch.no_grad():
        assert model(transform(image).unsqueeze(0)).shape == (1, 1000)
    model.set_input_size(img_size=160)  # and after a resize
    assert timm.data.resolve_model_data_config(model)['input_size'] == (3, 160, 160)


def test_non_square_rpb_tables_load_at_any_grid(tmp_path):
    trained = randomized(timm.create_model('vit_tiny_rpb', img_size=(32, 64), **VIT))  # grid 2 x 4
    path = save(trained, tmp_path / 'model.safetensors')
    same = timm.create_model('vit_tiny_rpb', pretrained=True, img_size=(32, 64), **VIT,
                             pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(logits(same, (32, 64)), logits(trained, (32, 64)))
    table = trained.blocks[0].attn.pos_enc.relative_position_bias_table.detach()
    expected = resize_rpb_table(table, (2, 4), (5, 3))
    for route, model in loading_paths('vit_tiny_rpb', path, img_size=(80, 48), **VIT).items():
        torch.testing.assert_close(model.blocks[0].attn.pos_enc.relative_position_bias_table.detach(), expected,
                                   msg=route)
        assert model.blocks[0].attn.pos_enc.grid_size.tolist() == [5, 3]
    # the resized model's own checkpoint reloads at a third grid
    again = timm.create_model('vit_tiny_rpb', img_size=(48, 48), **VIT)
    again.load_state_dict(model.state_dict())
    torch.testing.assert_close(again.blocks[0].attn.pos_enc.relative_position_bias_table.detach(),
                               resize_rpb_table(expected, (5, 3), (3, 3)))


def test_old_rpb_key_is_renamed_by_the_filter(tmp_path):
    """Checkpoints saved before the layers were reorganised named the table ``pos_enc.table``."""
    trained = randomized(timm.create_model('vit_tiny_rpb', img_size=64, **VIT))
    old = {k.replace('relative_position_bias_table', 'table'): v for k, v in trained.state_dict().items()
           if not k.endswith('grid_size')}
    save_file(old, str(tmp_path / 'old.safetensors'))
    model = timm.create_model('vit_tiny_rpb', img_size=64, **VIT)
    load_checkpoint(model, str(tmp_path / 'old.safetensors'), filter_fn=checkpoint_filter_fn)
    torch.testing.assert_close(logits(model, 64), logits(trained, 64))
    pretrained = timm.create_model('vit_tiny_rpb', pretrained=True, img_size=96, **VIT,
                                   pretrained_cfg_overlay=dict(file=str(tmp_path / 'old.safetensors')))
    assert pretrained.blocks[0].attn.pos_enc.relative_position_bias_table.shape[0] == 11 * 11


@pytest.mark.parametrize('kwargs,allowed', [
    (dict(rope_theta=0), 'rope_theta must be a positive number'),
    (dict(rope_theta=-10), 'rope_theta must be a positive number'),
    (dict(rope_theta=float('inf')), 'rope_theta must be a positive number'),
    (dict(rope_fraction=0), r'rope_fraction must be in \(0, 1\]'),
    (dict(rope_fraction=-.5), r'rope_fraction must be in \(0, 1\]'),
    (dict(rope_fraction=1.5), r'rope_fraction must be in \(0, 1\]'),
])
@pytest.mark.parametrize('name', ['vit_tiny_rope_axial', 'swin_tiny_rope_mixed'])
def test_zero_and_negative_rope_settings_are_refused(name, kwargs, allowed):
    with pytest.raises(ValueError, match=allowed):
        timm.create_model(name, **(VIT if name.startswith('vit') else SWIN), **kwargs)


def test_without_class_token_the_pooling_follows_and_the_model_round_trips(tmp_path):
    model = randomized(timm.create_model('vit_tiny_rope_axial', class_token=False, img_size=64, **VIT))
    assert model.global_pool == 'avg'
    path = save(model, tmp_path / 'model.safetensors')
    loaded = timm.create_model('vit_tiny_rope_axial', pretrained=True, class_token=False, img_size=64, **VIT,
                               pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(logits(loaded, 64), logits(model, 64))
    assert timm.create_model('vit_tiny_ape', class_token=False, global_pool='max', **VIT).global_pool == 'max'


def test_layer_scale_is_turned_off_by_zero():
    """timm's create_model drops None kwargs before our entrypoint sees them, so init_values=None keeps
    DeiT-III's 1e-5; 0 (what timm's Block tests) turns layer scale off."""
    assert isinstance(timm.create_model('vit_tiny_ape', init_values=0, **VIT).blocks[0].ls1, torch.nn.Identity)
    assert timm.create_model('vit_tiny_ape', **VIT).blocks[0].ls1.gamma.detach().eq(1e-5).all()


def test_no_warning_for_new_checkpoints(tmp_path):
    trained = timm.create_model('vit_tiny_rope_axial', img_size=64, **VIT)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        timm.create_model('vit_tiny_rope_axial', img_size=96, **VIT).load_state_dict(trained.state_dict())
