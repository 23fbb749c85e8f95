"""Pretrained tags shared by the model families (ViT, Swin).

A family builds its ``default_cfgs`` from :func:`pretrained_cfgs`, which orders an architecture's tags for
timm's ``generate_default_cfgs``: published ImageNet-1k weights (converted on load by the family's
``checkpoint_filter_fn``) are the default where they exist, then our ``.in100`` weights once uploaded. An
``.in100`` tag whose weights are not on the Hub yet is registered, so its config and model card exist, but
is never the default.
"""
from functools import lru_cache
from importlib.resources import files
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ImageNetInfo
from timm.models import resolve_pretrained_cfg

from ..layers.rotary import TRAIN_GRID_BUFFER
from ..layers.rpb import GRID_BUFFER

__all__ = ['HUB_ORG', 'WEIGHTS_FILE', 'IN100_UPLOADED', 'Weights', 'SWIN_IN1K', 'imagenet100_wnids',
           'base_cfg', 'pretrained_cfgs', 'pretrained_img_size', 'check_has_weights', 'checked_filter']

HUB_ORG = 'timm-pe'
# Named explicitly so that timm loads safetensors and never falls back to unpickling a .bin from the network.
WEIGHTS_FILE = 'model.safetensors'
# Architectures whose ``.in100`` weights are on the Hub under HUB_ORG; an architecture listed here gets its
# ``.in100`` tag as the default when it has no ImageNet-1k weights.
IN100_UPLOADED = frozenset()
GRID_RECORDS = (f'.{TRAIN_GRID_BUFFER}', f'.{GRID_BUFFER}')


class Weights(NamedTuple):
    """Weights published by others, loaded from the Hub and converted by the family's checkpoint filter."""
    tag: str
    hf_hub_id: str
    license: str
    origin_url: str
    paper_name: str
    paper_ids: str


def _rope_vit(tag: str, hf_hub_id: str) -> Weights:
    return Weights(tag, hf_hub_id, 'apache-2.0', 'https://github.com/naver-ai/rope-vit',
                   'Rotary Position Embedding for Vision Transformer', 'arXiv:2403.13298')


def _deit3(tag: str, hf_hub_id: str) -> Weights:
    return Weights(tag, hf_hub_id, 'apache-2.0', 'https://github.com/facebookresearch/deit',
                   'DeiT III: Revenge of the ViT', 'arXiv:2204.07118')


def _swin(tag: str, hf_hub_id: str) -> Weights:
    return Weights(tag, hf_hub_id, 'mit', 'https://github.com/microsoft/Swin-Transformer',
                   'Swin Transformer: Hierarchical Vision Transformer using Shifted Windows', 'arXiv:2103.14030')


# Our ViT architectures with a weight-compatible model in timm (same blocks, layer scale, class token).
VIT_IN1K = {
    **{f'vit_{size}_{ours}': _rope_vit('naver_in1k', f'timm/vit_{size}_patch16_{peer}_224.naver_in1k')
       for size in ('small', 'base')
       for ours, peer in (('rope_axial', 'rope'), ('rope_mixed', 'rope_mixed'),
                          ('rope_axial_ape', 'rope_ape'), ('rope_mixed_ape', 'rope_mixed_ape'))},
    **{f'vit_{size}_ape': _deit3('fb_in1k', f'timm/deit3_{size}_patch16_224.fb_in1k') for size in ('small', 'base')},
}
# Swin v1 (window 7, RPB) weights for ``swin_{size}_rpb``; swin.py's checkpoint filter converts them.
SWIN_IN1K = {f'swin_{size}_rpb': _swin('ms_in1k', f'timm/swin_{size}_patch4_window7_224.ms_in1k')
             for size in ('tiny', 'small', 'base')}


@lru_cache(maxsize=1)
def imagenet100_wnids() -> Tuple[str, ...]:
    """The ImageNet100 WNIDs in sorted order, which is their label order."""
    text = files('timm_pe').joinpath('data/imagenet100_classes.txt').read_text()
    return tuple(sorted(text.split()))


@lru_cache(maxsize=1)
def imagenet100_descriptions() -> Dict[str, str]:
    info = ImageNetInfo()
    return {wnid: info.label_name_to_description(wnid) for wnid in imagenet100_wnids()}


def base_cfg(**kwargs) -> Dict[str, Any]:
    """The pretrained-config fields every architecture here shares (ImageNet-1k head, 224 px, bicubic)."""
    return {
        'url': '',
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'crop_pct': .9,
        'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj',
        'license': 'apache-2.0',
        **kwargs,
    }


def _in1k_cfg(base: Dict[str, Any], weights: Weights) -> Dict[str, Any]:
    return dict(
        base,
        hf_hub_id=weights.hf_hub_id,
        hf_hub_filename=WEIGHTS_FILE,
        license=weights.license,
        origin_url=weights.origin_url,
        paper_name=weights.paper_name,
        paper_ids=tuple(dict.fromkeys((*base.get('paper_ids', ()), weights.paper_ids))),
        description=f'ImageNet-1k weights of {weights.hf_hub_id}, converted to this architecture on load.',
    )


def _in100_cfg(arch: str, base: Dict[str, Any]) -> Dict[str, Any]:
    """The ``.in100`` tag; it points to the Hub only once uploaded, so that timm does not list weights that do
    not exist (``timm.list_pretrained``) and ``pretrained=True`` refuses it (see :func:`check_has_weights`)."""
    hub = dict(hf_hub_id=f'{HUB_ORG}/{arch}.in100', hf_hub_filename=WEIGHTS_FILE) if arch in IN100_UPLOADED else {}
    return dict(
        base,
        **hub,
        num_classes=100,
        label_names=imagenet100_wnids(),
        label_descriptions=imagenet100_descriptions(),
        license='apache-2.0',
        description='Trained from scratch on ImageNet100 at 224 px with the recipe in recipes/.',
    )


def pretrained_cfgs(
        arch: str,
        base: Dict[str, Any],
        in1k: Optional[Weights] = None,
        in100: bool = False,
) -> Dict[str, Dict[str, Any]]:
    """``'arch.tag'`` entries for ``generate_default_cfgs``, in the order that makes the right tag the default.

    timm makes the first tag with weights the default, and a ``'*'``-marked tag overrides that only when it
    comes after it, hence the untagged entry without weights listed last when ``.in100`` is not uploaded.
    """
    cfgs = {}
    if in1k is not None:
        cfgs[f'{arch}.{in1k.tag}'] = _in1k_cfg(base, in1k)
    if in100:
        cfgs[f'{arch}.in100'] = _in100_cfg(arch, base)
    if in1k is None and not (in100 and arch in IN100_UPLOADED):
        cfgs[f'{arch}.*' if in100 else arch] = base
    return cfgs


def check_has_weights(variant: str, kwargs: Dict[str, Any]) -> None:
    """Refuse ``pretrained=True`` for a tag with no weights anywhere (timm would warn and keep random weights)."""
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    if not cfg.has_weights:
        tag = f'.{cfg.tag}' if cfg.tag else ''
        raise ValueError(
            f'{variant}{tag} has no weights to load: they are not published yet. Build it with pretrained=False, '
            f"or load your own with pretrained_cfg_overlay=dict(file='model.safetensors'); tags with weights: "
            f'timm.list_pretrained()')


def pretrained_img_size(variant: str, kwargs: Dict[str, Any]) -> Tuple[int, int]:
    """Image size the weights about to be loaded were trained at: their pretrained cfg's ``input_size``.

    RoPE models take it as ``rope_train_img_size`` so that ``rope_scaling`` knows the training grid when
    the model is built at another resolution.
    """
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    return tuple(cfg.input_size[-2:])


def _classifier_keys(model) -> set:
    classifier = model.pretrained_cfg.get('classifier') or ()
    names = (classifier,) if isinstance(classifier, str) else classifier
    return {f'{name}.{p}' for name in names for p in ('weight', 'bias')}


def checked_filter(filter_fn: Callable) -> Callable:
    """Wrap a checkpoint filter so that converted weights whose keys differ from the model's fail, naming
    them, also where timm loads non-strictly because the classifier is replaced (another ``num_classes``)."""

    def filter_and_check(state_dict, model):
        state_dict = filter_fn(state_dict, model)
        expected, classifier = set(model.state_dict()), _classifier_keys(model)
        # grid records an older checkpoint lacks are filled in (and said so) by their modules on load
        missing = sorted(k for k in expected - set(state_dict) - classifier if not k.endswith(GRID_RECORDS))
        unexpected = sorted(set(state_dict) - expected - classifier)
        if missing or unexpected:
            raise RuntimeError(
                f'Checkpoint does not fit {type(model).__name__} '
                f'({model.pretrained_cfg.get("architecture")}): missing keys {missing}, unexpected keys {unexpected}')
        return state_dict

    return filter_and_check
