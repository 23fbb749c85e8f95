"""ViT with a choice of position encoding: timm's VisionTransformer, blocks and patch embedding, with
``PositionalAttention`` in every block and the encoding chosen by two arguments.

``abs_pos``: 'learn' (APE), 'sincos' or 'none' (added to the patch tokens).
``attn_pos``: None or an attention encoding of the registry (``timm_pe.layers.ENCODINGS``: RoPE, ALiBi, RPB...).
One model is registered per size and encoding of the registry (plus RoPE with APE).
"""
from typing import Dict, List, Optional, Tuple, Union

import torch
from timm.layers import resample_abs_pos_embed, to_2tuple
from timm.models import generate_default_cfgs
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from ..layers import (ENCODINGS, RopeDinoV3, OPTION_NAMES, TABLE_CACHE, PositionalAttention, RelativePositionBias,
                      create_encoding, get_encoding, takes_rope_scaling, resolve_options, sincos_2d_embed)
from ..layers.rotary import add_train_grids
from ._builder import build_model, register_variant, set_cfg_input_size
from ._pretrained import VIT_IN1K, base_cfg, pretrained_cfgs

__all__ = ['PositionalVisionTransformer', 'checkpoint_filter_fn', 'convert_timm_rope_vit']

ABS_POS = ('learn', 'sincos', 'none')


def check_img_size(img_size, patch_size) -> Tuple[int, int]:
    """The image size as (H, W), rejected unless both sides are multiples of the patch size."""
    img_size, patch_size = to_2tuple(img_size), to_2tuple(patch_size)
    if img_size[0] % patch_size[0] or img_size[1] % patch_size[1]:
        raise ValueError(
            f'Image size {img_size[0]}x{img_size[1]} is not a multiple of the patch size '
            f'{patch_size[0]}x{patch_size[1]}; use sides such as {img_size[0] // patch_size[0] * patch_size[0]}'
            f'x{img_size[1] // patch_size[1] * patch_size[1]}')
    return img_size


class GridBlock(Block):
    """timm's pre-norm block, handing the patch grid to attention."""

    def forward(self, x: torch.Tensor, grid: Tuple[int, int], attn_mask: Optional[torch.Tensor] = None):
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), grid, attn_mask)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class PositionalVisionTransformer(VisionTransformer):
    """timm VisionTransformer whose position information is set by ``abs_pos`` and ``attn_pos``."""

    def __init__(
            self,
            abs_pos: str = 'learn',
            attn_pos: Optional[str] = None,
            rope_train_img_size: Optional[Union[int, Tuple[int, int]]] = None,
            **kwargs,
    ):
        """
        Args:
            abs_pos: absolute embedding added to the patch tokens: 'learn', 'sincos' or 'none'.
            attn_pos: encoding inside attention: None or a name in ``timm_pe.layers.ENCODINGS`` whose kind
                is 'rotary' or 'bias'.
            rope_train_img_size: the image size a RoPE model was trained at, which 'interp' and 'ntk'
                ``rope_scaling`` refer to (default: ``img_size``).
            **kwargs: the options of ``attn_pos`` (e.g. ``rope_theta``, ``rope_fraction``, ``rope_scaling``;
                see the registry), then timm VisionTransformer arguments.
        """
        if abs_pos not in ABS_POS:
            raise ValueError(f'Unknown abs_pos {abs_pos!r}; allowed: {ABS_POS}')
        if attn_pos is not None and get_encoding(attn_pos).kind == 'absolute':
            raise ValueError(f'attn_pos={attn_pos!r} is an absolute encoding; use abs_pos')
        options = resolve_options(attn_pos, 'vit', {k: kwargs.pop(k, None) for k in OPTION_NAMES})
        if rope_train_img_size is not None and not takes_rope_scaling(attn_pos):
            raise TypeError(f'rope_train_img_size only applies to RoPE models, not attn_pos={attn_pos!r}')
        if attn_pos is not None and kwargs.get('patch_drop_rate', 0.):
            raise ValueError('patch_drop_rate would drop tokens whose grid positions attention relies on')
        patch_size = to_2tuple(kwargs.get('patch_size', 16))
        kwargs['img_size'] = check_img_size(kwargs.get('img_size', 224), patch_size)
        super().__init__(
            pos_embed='learn' if abs_pos == 'learn' else 'none',
            block_fn=GridBlock,
            attn_layer=PositionalAttention,
            **kwargs,
        )
        self.abs_pos = abs_pos
        self.attn_pos = attn_pos
        # blocks take the grid too, which nn.Sequential cannot pass (and TorchScript compiles its forward)
        self.blocks = nn.ModuleList(self.blocks)
        if abs_pos == 'sincos':
            TABLE_CACHE.hold(self, 'sincos2d')
        num_heads = self.blocks[0].attn.num_heads
        train_size = check_img_size(rope_train_img_size or kwargs['img_size'], patch_size)
        train_grid = (train_size[0] // patch_size[0], train_size[1] // patch_size[1])
        shared = attn_pos is not None and get_encoding(attn_pos).shared
        enc = None
        for i, blk in enumerate(self.blocks):
            if enc is None or not shared:
                enc = create_encoding(attn_pos, self.embed_dim // num_heads, num_heads, self.patch_embed.grid_size,
                                      train_grid, i, len(self.blocks), **options)
                if enc is not None:  # on the device and in the dtype asked of the factory, as timm's modules are
                    enc.to(device=kwargs.get('device'), dtype=kwargs.get('dtype'))
            blk.attn.set_position_encoding(enc, self.num_prefix_tokens)

    @torch.jit.ignore
    def no_weight_decay(self):
        """timm's set plus every learned encoding: RoPE-Mixed frequencies and RPB tables."""
        names = set(super().no_weight_decay())
        names.update(n for n, _ in self.named_parameters() if '.pos_enc.' in n)
        return names

    def set_input_size(self, img_size=None, patch_size=None) -> None:
        """New model resolution: APE and RPB tables are resampled, RoPE and ALiBi need nothing; the data
        config follows."""
        if img_size is not None:
            img_size = check_img_size(img_size, patch_size or self.patch_embed.patch_size)
        super().set_input_size(img_size=img_size, patch_size=patch_size)
        if hasattr(self, 'pretrained_cfg'):
            set_cfg_input_size(self, self.patch_embed.img_size)
        for blk in self.blocks:
            if isinstance(blk.attn.pos_enc, RelativePositionBias):
                blk.attn.pos_enc.set_grid(self.patch_embed.grid_size)

    def patch_grid(self, x: torch.Tensor) -> Tuple[int, int]:
        """Patch grid (H, W) of an input image batch."""
        if self.dynamic_img_size:
            return self.patch_embed.dynamic_feat_size((x.shape[-2], x.shape[-1]))
        return self.patch_embed.grid_size

    @torch.jit.ignore
    def _draw_train_coords(self) -> None:
        """An encoding with random train-time coordinates (DINOv3's RoPE, shared by all layers) draws them
        once per forward, here."""
        pos_enc = self.blocks[0].attn.pos_enc if len(self.blocks) else None
        if self.training and isinstance(pos_enc, RopeDinoV3) and pos_enc.augments():
            pos_enc.redraw()

    def _embed(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self._draw_train_coords()
        x = self.patch_embed(x)
        if self.abs_pos == 'sincos':  # tokens are (B, H, W, C) with dynamic_img_size, else (B, H*W, C)
            x = x + sincos_2d_embed(grid, self.embed_dim, x.device).to(x.dtype).view(x.shape[1:])
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        return self.norm_pre(x)

    def forward_features(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """timm's, less ``is_causal`` (no causal attention here; an FX trace with no concrete_args could not
        branch on it)."""
        grid = self.patch_grid(x)
        x = self._embed(x, grid)
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, grid, attn_mask)
            else:
                x = blk(x, grid, attn_mask)
        return self.norm(x)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, attn_mask))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
            output_dict: bool = False,
            attn_mask: Optional[torch.Tensor] = None,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]], Dict[str, object]]:
        """timm's ``forward_intermediates`` contract (see VisionTransformer), less ``is_causal``."""
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        B = x.shape[0]
        grid = self.patch_grid(x)
        x = self._embed(x, grid)
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, blk in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, grid, attn_mask)
            else:
                x = blk(x, grid, attn_mask)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)

        prefix = [y[:, :self.num_prefix_tokens] for y in intermediates] if self.num_prefix_tokens else None
        intermediates = [y[:, self.num_prefix_tokens:] for y in intermediates]
        if output_fmt == 'NCHW':
            intermediates = [y.reshape(B, grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()
                             for y in intermediates]

        if output_dict:
            result = {'image_intermediates': intermediates}
            if prefix is not None and return_prefix_tokens:
                result['image_intermediates_prefix'] = prefix
            if not intermediates_only:
                result['image_features'] = self.norm(x)
            return result
        if return_prefix_tokens and prefix is not None:
            intermediates = list(zip(intermediates, prefix))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates


def _interleaved_to_half(w: torch.Tensor, num_heads: int, rot_dim: int) -> torch.Tensor:
    """Reorder q or k projection rows in each head from interleaved rotation pairs (2j, 2j+1), as in
    rope-vit and timm's EVA, to our rotate-half pairs (j, j + rot_dim/2); unrotated dims stay put."""
    head_dim = w.shape[0] // num_heads
    order = torch.cat([torch.arange(0, rot_dim, 2), torch.arange(1, rot_dim, 2), torch.arange(rot_dim, head_dim)])
    return w.reshape(num_heads, head_dim, *w.shape[1:])[:, order].reshape(w.shape)


def convert_timm_rope_vit(state_dict: Dict[str, torch.Tensor], model: PositionalVisionTransformer) -> Dict[str, torch.Tensor]:
    """State dict of timm's rope-vit models (``vit_*_patch16_rope*_224``, timm's Eva class) in our layout.

    Layer scale ``gamma_1/2`` becomes ``ls1/2.gamma``, split q/v biases are fused, the model-wide
    RoPE-Mixed frequencies are split per layer, and q/k rows move from interleaved to rotate-half pairs.
    """
    num_heads = model.blocks[0].attn.num_heads
    rot_dims = {enc.rot_dim for enc in (blk.attn.pos_enc for blk in model.blocks) if getattr(enc, 'kind', None) == 'rotary'}
    head_dim = model.embed_dim // num_heads
    if rot_dims and rot_dims != {head_dim}:
        raise ValueError(f'rope-vit checkpoints rotate whole heads ({head_dim} dims); this model rotates '
                         f'{sorted(rot_dims)}: build it with rope_fraction=1')
    out = {}
    for k, v in state_dict.items():
        if k == 'rope.freqs':
            for i in range(v.shape[1]):
                out[f'blocks.{i}.attn.pos_enc.freqs'] = v[:, i]
            continue
        if k.endswith(('attn.q_bias', 'attn.v_bias', 'attn.k_bias')):
            continue
        k = k.replace('.gamma_1', '.ls1.gamma').replace('.gamma_2', '.ls2.gamma')
        out[k] = v
    for i in range(len(model.blocks)):
        prefix = f'blocks.{i}.attn.'
        if prefix + 'q_bias' in state_dict:
            q_bias = state_dict[prefix + 'q_bias']
            out[prefix + 'qkv.bias'] = torch.cat([q_bias, torch.zeros_like(q_bias), state_dict[prefix + 'v_bias']])
        if rot_dims:
            for name in ('qkv.weight', 'qkv.bias'):
                if prefix + name in out:
                    q, k, v = out[prefix + name].chunk(3)
                    rot_dim = head_dim
                    out[prefix + name] = torch.cat([
                        _interleaved_to_half(q, num_heads, rot_dim), _interleaved_to_half(k, num_heads, rot_dim), v])
    return out


# RPB table key of checkpoints saved before the layers were reorganised (same layout, another name)
OLD_RPB_SUFFIX = '.pos_enc.table'


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: PositionalVisionTransformer) -> Dict[str, torch.Tensor]:
    """Adapt a checkpoint to ``model``: convert timm rope-vit (Eva) weights (trained at the size the model's
    pretrained cfg gives, recorded as their RoPE training grid), resample APE to the model grid, rename old
    RPB keys. RPB tables of any grid are resized by the RPB module on load. DeiT-III checkpoints need
    nothing more than the resampling."""
    state_dict = state_dict.get('model', state_dict.get('state_dict', state_dict))
    if 'rope.freqs' in state_dict or any('.gamma_1' in k for k in state_dict):
        state_dict = add_train_grids(convert_timm_rope_vit(state_dict, model), model)
    out = {}
    grid = model.patch_embed.grid_size
    for k, v in state_dict.items():
        if k.endswith('.pos_enc.table'):  # the RPB parameter's name before the layers/ layout
            k = k[:-len('table')] + 'relative_position_bias_table'
        if k == 'pos_embed' and model.pos_embed is not None and v.shape != model.pos_embed.shape:
            num_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
            v = resample_abs_pos_embed(v, new_size=grid, num_prefix_tokens=num_prefix, verbose=True)
        elif k.endswith(OLD_RPB_SUFFIX):
            k = k[:-len(OLD_RPB_SUFFIX)] + '.pos_enc.relative_position_bias_table'
        out[k] = v
    return out


def _cfg(**kwargs):
    return base_cfg(pool_size=None, classifier='head',
                    fixed_input_size=True,  # strict patch embedding: timm's scripts pass --img-size to the model
                    **kwargs)


SIZES = {
    'tiny': dict(embed_dim=192, num_heads=3),
    'small': dict(embed_dim=384, num_heads=6),
    'base': dict(embed_dim=768, num_heads=12),
}
# variant suffix -> model args: each absolute encoding, none, each attention encoding, and RoPE with APE
ABS_VARIANTS = {'ape': 'learn', 'sincos': 'sincos', 'nope': 'none'}
VARIANTS = {
    **{name: dict(abs_pos=abs_pos) for name, abs_pos in ABS_VARIANTS.items()},
    **{name: dict(abs_pos='none', attn_pos=name) for name, e in ENCODINGS.items()
       if e.kind != 'absolute' and 'vit' in e.families},
    **{f'{name}_ape': dict(abs_pos='learn', attn_pos=name) for name, e in ENCODINGS.items()
       if e.kind == 'rotary' and 'vit' in e.families},
}
# global_pool follows class_token (see _create_vit)
DEIT3_ARGS = dict(patch_size=16, depth=12, mlp_ratio=4, qkv_bias=True, init_values=1e-5, class_token=True,
                  no_embed_class=True)


def variant_paper_ids(args: Dict) -> Tuple[str, ...]:
    """Papers of the encodings a variant combines (ViT's own paper for no encoding)."""
    names = [{'learn': 'ape', 'sincos': 'sincos'}.get(args['abs_pos']), args.get('attn_pos')]
    ids = [i for name in names if name for i in ENCODINGS[name].paper_ids]
    return tuple(dict.fromkeys(ids)) or ('arXiv:2010.11929',)


# Trained with the ImageNet100 recipe (recipes/*.yaml).
IN100_ARCHS = {f'vit_small_{enc}' for enc in ('ape', 'nope', 'rope_axial', 'rope_mixed', 'alibi2d', 'rpb')}

default_cfgs = generate_default_cfgs({
    name: cfg
    for size in SIZES for enc in VARIANTS
    for name, cfg in pretrained_cfgs(
        f'vit_{size}_{enc}', _cfg(paper_ids=variant_paper_ids(VARIANTS[enc])),
        in1k=VIT_IN1K.get(f'vit_{size}_{enc}'), in100=f'vit_{size}_{enc}' in IN100_ARCHS).items()
})


def _create_vit(variant: str, pretrained: bool = False, **kwargs) -> PositionalVisionTransformer:
    # DeiT-III pools the class token; a model without one averages the patch tokens
    kwargs.setdefault('global_pool', 'token' if kwargs.get('class_token', True) else 'avg')
    return build_model(PositionalVisionTransformer, variant, pretrained, checkpoint_filter_fn,
                       default_feature_cfg=dict(out_indices=3, feature_cls='getter'), **kwargs)


for _size in SIZES:
    for _encoding in VARIANTS:
        register_variant(
            f'vit_{_size}_{_encoding}', _create_vit, dict(DEIT3_ARGS, **SIZES[_size], **VARIANTS[_encoding]),
            f'ViT-{_size[0].upper()}/16, DeiT-III blocks, position encoding: {_encoding}.')
