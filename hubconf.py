"""torch.hub entry points for every timm-pe model, e.g.
``torch.hub.load('<owner>/timm-pe', 'vit_small_rope_mixed', pretrained=True)``; a pretrained tag other than the
default goes in ``pretrained_cfg='in100'``, other keyword arguments go to ``timm.create_model``."""
dependencies = ['torch', 'timm', 'huggingface_hub', 'safetensors']

import timm as _timm

from timm_pe.publish import registered_models as _registered_models  # importing timm_pe registers its models


def _hub_entrypoint(name: str):
    def entrypoint(pretrained: bool = False, **kwargs):
        return _timm.create_model(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = _timm.models.model_entrypoint(name).__doc__
    return entrypoint


globals().update({_name: _hub_entrypoint(_name) for _name in _registered_models()})
