"""The models where other libraries pick timm models up: transformers' ``TimmWrapper`` (from an exported
folder) and open_clip's timm vision tower. Each is checked against the plain timm model's outputs."""
import pytest
import timm
import torch
import transformers

from timm_pe.publish import export


@pytest.mark.parametrize('name', ['vit_tiny_rope_mixed', 'vit_tiny_alibi2d'])
def test_timm_wrapper_loads_an_export_with_the_same_outputs(tmp_path, name):
    torch.manual_seed(0)
    model = timm.create_model(name, depth=1, num_classes=5).eval()
    folder = export(model, tmp_path / 'export', trained=False)
    classifier = transformers.AutoModelForImageClassification.from_pretrained(folder).eval()
    backbone = transformers.AutoModel.from_pretrained(folder).eval()
    assert type(classifier).__name__ == 'TimmWrapperForImageClassification'
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(classifier(pixel_values=x).logits, model(x), rtol=0, atol=0)
        torch.testing.assert_close(backbone(pixel_values=x).last_hidden_state, model.forward_features(x),
                                   rtol=0, atol=0)


def test_timm_wrapper_preprocessing_is_timms(tmp_path):
    from PIL import Image
    image = Image.fromarray(torch.randint(0, 256, (200, 300, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).numpy())
    model = timm.create_model('vit_tiny_rope_axial', depth=1, num_classes=5, img_size=160)
    folder = export(model, tmp_path / 'export', trained=False)
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    pixel_values = processor(image, return_tensors='pt')['pixel_values']
    assert pixel_values.shape == (1, 3, 160, 160)
    torch.testing.assert_close(pixel_values[0], transform(image))


def test_open_clip_tower_is_the_timm_model():
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    torch.manual_seed(0)
    vision = CLIPVisionCfg(timm_model_name='vit_tiny_rope_axial', timm_model_pretrained=False, timm_pool='avg',
                           timm_proj='linear', image_size=224)
    text = CLIPTextCfg(context_length=8, vocab_size=100, width=32, heads=2, layers=1)
    clip = CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text).eval()
    trunk = clip.visual.trunk
    assert trunk.attn_pos == 'rope_axial' and trunk.num_classes == 0
    standalone = timm.create_model('vit_tiny_rope_axial').eval()
    standalone.reset_classifier(0, global_pool='avg')  # what open_clip does to the trunk
    standalone.load_state_dict(trunk.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(clip.encode_image(x), clip.visual.head(standalone(x)))
    clip.visual.lock(unlocked_groups=1)  # open_clip's layer freezing goes through timm's group_matcher
    trainable = {n.rsplit('.', 1)[0] for n, p in trunk.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(('blocks.11.', 'norm')) for n in trainable), trainable
