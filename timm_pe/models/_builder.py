"""Building and registering the model families the same way: timm's builder plus RoPE's training size,
and one registered entrypoint per (size, encoding)."""
from typing import Callable, Dict, Optional

from timm.layers import to_2tuple
from timm.models import build_model_with_cfg, register_model
from timm.models._input import update_model_args

from ..layers import takes_rope_scaling
from ._pretrained import check_has_weights, checked_filter, pretrained_img_size


def build_model(model_cls: type, variant: str, pretrained: bool, checkpoint_filter_fn: Callable,
                default_feature_cfg: Dict, infer_rope_train_size: bool = True, **kwargs):
    """``build_model_with_cfg`` with the checked filter and the family's ``feature_cfg`` updated by the caller's.

    A RoPE model loading weights takes their training size as ``rope_train_img_size`` (what ``rope_scaling``
    scales to) and records it in its model args, so an export rebuilds the same training grid at any
    ``img_size``."""
    is_rope = takes_rope_scaling(kwargs.get('attn_pos'))
    if pretrained:
        check_has_weights(variant, kwargs)
    if is_rope and pretrained and infer_rope_train_size and kwargs.get('rope_train_img_size') is None:
        kwargs['rope_train_img_size'] = pretrained_img_size(variant, kwargs)
    model = build_model_with_cfg(
        model_cls, variant, pretrained,
        pretrained_filter_fn=checked_filter(checkpoint_filter_fn),
        feature_cfg={**default_feature_cfg, **(kwargs.pop('feature_cfg', None) or {})},
        **kwargs,
    )
    if is_rope and kwargs.get('rope_train_img_size') is not None:
        update_model_args(model, rope_train_img_size=to_2tuple(kwargs['rope_train_img_size']))
    if 'img_size' in kwargs:
        set_cfg_input_size(model, kwargs['img_size'])
    return model


def set_cfg_input_size(model, img_size) -> None:
    """Make the model's pretrained cfg report the size it is built at, so that timm's data config
    (``resolve_model_data_config``) feeds it images of that size rather than the weights' training size."""
    channels = model.pretrained_cfg.get('input_size', (3,))[0]
    model.pretrained_cfg['input_size'] = (channels, *to_2tuple(img_size))


def register_variant(name: str, create: Callable, model_args: Dict, doc: str, arch: Optional[str] = None):
    """Register ``name`` in timm as ``create(arch or name, **model_args, **user kwargs)``.

    The entrypoint takes ``create``'s module so that timm finds that module's ``default_cfgs``.
    """
    def entrypoint(pretrained: bool = False, **kwargs):
        return create(arch or name, pretrained=pretrained, **dict(model_args, **kwargs))

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = create.__module__
    entrypoint.__doc__ = doc
    return register_model(entrypoint)
