"""torch.hub over the repository checkout: every registered timm-pe model is an entry point."""
import importlib.util
from pathlib import Path

import torch

from timm_pe.publish import registered_models
from timm_pe.models.swin import PositionalSwinTransformer
from timm_pe.models.vit import PositionalVisionTransformer

REPO = str(Path(__file__).resolve().parent.parent)


def test_lists_every_registered_model():
    """What torch.hub.list reports (it only reads GitHub repos): the public callables of hubconf.py."""
    spec = importlib.util.spec_from_file_location('hubconf', Path(REPO) / 'hubconf.py')
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entrypoints = [name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith('_')]
    assert sorted(entrypoints) == sorted(registered_models())
    assert hubconf.dependencies == ['torch', 'timm', 'huggingface_hub', 'safetensors']


def test_loads_through_timm_create_model():
    vit = torch.hub.load(REPO, 'vit_tiny_alibi2d', source='local', depth=1)
    assert isinstance(vit, PositionalVisionTransformer) and len(vit.blocks) == 1
    in100 = torch.hub.load(REPO, 'vit_small_rope_mixed', source='local', pretrained_cfg='in100', depth=1)
    assert in100.num_classes == 100 and in100.pretrained_cfg['tag'] == 'in100'
    assert isinstance(torch.hub.load(REPO, 'swin_rope', source='local', depths=(1, 1, 1, 1)), PositionalSwinTransformer)
