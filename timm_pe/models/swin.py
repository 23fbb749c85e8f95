"""Swin (v1) with a choice of position encoding inside the windows: timm's SwinTransformer with its stages,
patch merging, window partition and cyclic shift, where only the window attention is replaced.

``attn_pos``: 'rpb' (Swin's relative position bias, timm's parameter names), 'rope_axial', 'rope_mixed' or
'alibi2d'. Rotary and ALiBi encodings use window-local coordinates (x = i mod Ww, y = i div Ww inside the
window), the same in shifted and unshifted blocks.

Other resolutions follow rope-vit: by default the window is image size / 32 per axis (7 at 224, 12 at 384,
8x10 at 256x320); ``window_size=`` fixes the windows instead. The same rule serves a model built at a size,
``set_input_size`` and, with ``dynamic_img_size=True``, every input. Image sizes must split into whole windows
at every stage: timm would pad instead, letting padding tokens into attention.
"""
import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
from timm.layers import to_2tuple
from timm.models import generate_default_cfgs
from timm.models import swin_transformer as timm_swin
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from ..layers import (ENCODINGS, OPTION_NAMES, PositionalAttention, RelativePositionBias, create_encoding,
                      takes_rope_scaling, resolve_options)
from ..layers.rpb import GRID_BUFFER
from ._builder import build_model, register_variant, set_cfg_input_size
from ._pretrained import SWIN_IN1K, base_cfg, pretrained_cfgs

__all__ = ['PositionalSwinTransformer', 'SwinWindowAttention', 'checkpoint_filter_fn', 'stage_windows']

ATTN_POS = tuple(name for name, e in ENCODINGS.items() if 'swin' in e.families)
SWIN_PAPER = 'arXiv:2103.14030'


Size = Tuple[int, int]


def stage_windows(
        img_size: Union[int, Size],
        patch_size: Union[int, Size],
        windows: Sequence[Size],
        always_partition: bool = False,
) -> Tuple[Size, ...]:
    """The window each stage's blocks use at ``img_size``, checked to tile every stage grid exactly.

    Like timm, a window larger than its stage grid shrinks to the grid (and its blocks do not shift) unless
    ``always_partition``. Raises ValueError where timm would silently pad.
    """
    img_size, patch_size = to_2tuple(img_size), to_2tuple(patch_size)
    num_stages = len(windows)
    multiple = (patch_size[0] * 2 ** (num_stages - 1), patch_size[1] * 2 ** (num_stages - 1))
    if img_size[0] % multiple[0] or img_size[1] % multiple[1]:
        nearest = [max(m, s // m * m) for s, m in zip(img_size, multiple)]
        raise ValueError(
            f'Image size {img_size[0]}x{img_size[1]} is not a multiple of {multiple[0]}x{multiple[1]} (patch size '
            f'times the {2 ** (num_stages - 1)}x downsampling of the last stage); use e.g. {nearest[0]}x{nearest[1]}')
    out = []
    for index, window in enumerate(windows):
        grid = (img_size[0] // (patch_size[0] * 2 ** index), img_size[1] // (patch_size[1] * 2 ** index))
        window = tuple(window) if always_partition else (min(grid[0], window[0]), min(grid[1], window[1]))
        if grid[0] % window[0] or grid[1] % window[1]:
            tiled = [math.lcm(*(side * 2 ** i * w[axis] for i, w in enumerate(windows)))
                     for axis, side in enumerate(patch_size)]
            raise ValueError(
                f'At image size {img_size[0]}x{img_size[1]} stage {index} has a {grid[0]}x{grid[1]} grid, which '
                f'{window[0]}x{window[1]} windows do not tile; the windows {list(windows)} tile sizes that are '
                f'multiples of {tiled[0]}x{tiled[1]}. Leave window_size unset for windows that follow the image '
                f'size (image size / {multiple[0]}, which tiles every multiple of {multiple[0]}x{multiple[1]})')
        out.append(window)
    return tuple(out)


def block_shift(block: nn.Module, window: Size) -> Size:
    """A timm Swin block's cyclic shift for ``window`` (as ``stage_windows`` gives it) at the block's input
    resolution, by timm's rule: half the window in blocks built to shift, none along an axis the window spans
    whole unless ``always_partition``."""
    if not any(block.target_shift_size):
        return 0, 0
    return tuple(w // 2 if block.always_partition or r > w else 0 for r, w in zip(block.input_resolution, window))


class SwinWindowAttention(PositionalAttention):
    """PositionalAttention over the windows of timm's Swin blocks, with timm's ``WindowAttention`` interface.

    The window is the attention's grid, so every encoding sees window-local coordinates. The relative
    position bias has timm's layout (index (dy + Wh-1)(2Ww-1) + dx + Ww-1); a state dict with timm's key
    (``attn.relative_position_bias_table``) loads into ``attn.pos_enc`` unchanged.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: Union[int, Size] = 7,
            qkv_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            pos_enc: Optional[nn.Module] = None,
            device=None,
            dtype=None,
    ):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
                         pos_enc=pos_enc, device=device, dtype=dtype)
        self.window_size = to_2tuple(window_size)
        self.register_load_state_dict_pre_hook(_load_timm_rpb_key)

    def set_window_size(self, window_size: Union[int, Size]) -> None:
        """Called by timm's block on a resize: an RPB table is resampled; other encodings need nothing."""
        window_size = to_2tuple(window_size)
        if isinstance(self.pos_enc, RelativePositionBias):
            self.pos_enc.set_grid(window_size)
        self.window_size = window_size

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B * num_windows, N, C) window tokens in raster order; mask: timm's (num_windows, N, N) shift
        mask in shifted blocks, None in unshifted ones (then rotary models attend with no mask at all)."""
        attn_mask: Optional[torch.Tensor] = None
        if mask is not None:
            # windows are batch-major: window w of image b is row b * num_windows + w
            attn_mask = mask.repeat(x.shape[0] // mask.shape[0], 1, 1).unsqueeze(1)
        return self.attend(x, self.window_size, attn_mask)


def _load_timm_rpb_key(module, state_dict, prefix, *args) -> None:
    timm_key = prefix + 'relative_position_bias_table'
    if timm_key in state_dict:
        state_dict[prefix + 'pos_enc.relative_position_bias_table'] = state_dict.pop(timm_key)


class PositionalSwinTransformer(SwinTransformer):
    """timm's SwinTransformer whose window attention carries the encoding chosen by ``attn_pos``."""

    def __init__(
            self,
            attn_pos: str = 'rpb',
            img_size: Union[int, Size] = 224,
            window_size: Optional[Union[int, Size, Sequence[Union[int, Size]]]] = None,
            rope_train_img_size: Optional[Union[int, Size]] = None,
            **kwargs,
    ):
        """
        Args:
            attn_pos: an encoding of the registry (``timm_pe.layers.ENCODINGS``) made for Swin windows.
            img_size: input image size; sides must be multiples of 32 (patch 4, three patch mergings).
            window_size: an int or (h, w) for all stages, or one per stage; default image size / 32.
            rope_train_img_size: the image size a RoPE model was trained at; its windows are the training
                grids of 'interp' and 'ntk' (default: the windows built here).
            **kwargs: the options of ``attn_pos`` (e.g. ``rope_theta``, ``rope_fraction``, ``rope_scaling``;
                see the registry), then timm SwinTransformer arguments.
        """
        if attn_pos not in ATTN_POS:
            raise ValueError(f'Unknown attn_pos {attn_pos!r}; allowed: {ATTN_POS}')
        options = resolve_options(attn_pos, 'swin', {k: kwargs.pop(k, None) for k in OPTION_NAMES})
        if rope_train_img_size is not None and not takes_rope_scaling(attn_pos):
            raise TypeError(f'rope_train_img_size only applies to RoPE models, not attn_pos={attn_pos!r}')
        img_size = to_2tuple(img_size)
        patch_size = kwargs.get('patch_size', 4)
        num_stages = len(kwargs.get('depths', (2, 2, 6, 2)))
        always_partition = kwargs.get('always_partition', False)
        windows = self._windows(img_size, patch_size, num_stages, window_size)
        stage_windows(img_size, patch_size, windows, always_partition)
        train_windows = None
        if rope_train_img_size is not None:
            train_size = to_2tuple(rope_train_img_size)
            train_windows = stage_windows(
                train_size, patch_size, self._windows(train_size, patch_size, num_stages, window_size),
                always_partition)
        # timm initialises its weights at the end of __init__; do that once the attention is ours
        weight_init = kwargs.pop('weight_init', '')
        super().__init__(img_size=img_size, window_size=windows, weight_init='skip', **kwargs)
        self.attn_pos = attn_pos

        for stage_index, stage in enumerate(self.layers):
            for block in stage.blocks:
                timm_attn = block.attn
                if timm_attn.qkv.out_features != 3 * timm_attn.dim:
                    raise ValueError('head_dim must be dim // num_heads for position-encoding Swin models')
                weight = timm_attn.qkv.weight
                train_grid = train_windows[stage_index] if train_windows else block.window_size
                head_dim = timm_attn.dim // timm_attn.num_heads
                pos_enc = create_encoding(attn_pos, head_dim, timm_attn.num_heads, block.window_size, train_grid,
                                          **options)
                block.attn = SwinWindowAttention(
                    timm_attn.dim, timm_attn.num_heads, block.window_size,
                    qkv_bias=timm_attn.qkv.bias is not None, attn_drop=timm_attn.attn_drop.p,
                    proj_drop=timm_attn.proj_drop.p, pos_enc=pos_enc.to(weight.device, weight.dtype),
                    device=weight.device, dtype=weight.dtype)

        self.weight_init_mode = 'reset' if weight_init == 'skip' else weight_init
        if weight_init != 'skip':
            self.init_weights(needs_reset=False)
        # the windows' rule at other sizes: fixed if the caller chose them, else image size / 32 (scaled)
        self.fixed_windows = window_size is not None
        self._fitted_img_size = self.patch_embed.img_size
        if self.dynamic_img_size:
            self.patch_embed.register_forward_pre_hook(self._fit_windows_to_input)

    @staticmethod
    def _windows(img_size: Size, patch_size, num_stages: int, window_size) -> Tuple[Size, ...]:
        """Per-stage windows asked for: ``window_size`` if given, else the last stage's grid (image size / 32)."""
        if window_size is None:
            patch_size = to_2tuple(patch_size)
            reduction = 2 ** (num_stages - 1)
            window_size = (max(1, img_size[0] // (patch_size[0] * reduction)),
                           max(1, img_size[1] // (patch_size[1] * reduction)))
        return timm_swin.resolve_stage_window_sizes(window_size, num_stages)

    def stage_windows_at(self, img_size: Union[int, Size]) -> Tuple[Size, ...]:
        """The per-stage windows this model uses at ``img_size``: the fixed ``window_size`` if one was chosen,
        else the reference windows scaled with the grid (image size / 32 by default). Raises ValueError for a
        size those windows do not tile."""
        img_size = to_2tuple(img_size)
        patch_size = self.patch_embed.patch_size
        windows = self._ref_window_sizes
        if not self.fixed_windows:
            grid = (img_size[0] // patch_size[0], img_size[1] // patch_size[1])
            windows = timm_swin.calc_stage_window_sizes(grid, self._ref_window_sizes, self._ref_grid_size)
        return stage_windows(img_size, patch_size, windows, self.layers[0].blocks[0].always_partition)

    def _fit_windows_to_input(self, patch_embed: nn.Module, args) -> None:
        """dynamic_img_size: before the stages run, give every block the window and shift (so the shift mask,
        which timm builds per input) of this input's size. Only the geometry changes, never a weight: an RPB
        table is resized to the window on the fly (and cached). A hook on the patch embedding covers every
        path in (forward, forward_intermediates, features_only)."""
        x = args[0]
        if isinstance(x, torch.fx.Proxy):
            raise TypeError('A Swin built with dynamic_img_size=True picks its windows from the input size, which '
                            'FX cannot trace; build it at the size to trace (or call set_input_size)')
        img_size = (int(x.shape[-2]), int(x.shape[-1]))
        if img_size == self._fitted_img_size:
            return
        windows = self.stage_windows_at(img_size)
        patch_size = patch_embed.patch_size
        for index, stage in enumerate(self.layers):
            grid = (img_size[0] // (patch_size[0] * 2 ** index), img_size[1] // (patch_size[1] * 2 ** index))
            for block in stage.blocks:
                block.input_resolution = grid
                block.window_size, block.shift_size = windows[index], block_shift(block, windows[index])
                block.window_area = block.window_size[0] * block.window_size[1]
                block.attn.window_size = block.window_size
        self._fitted_img_size = img_size

    @torch.jit.ignore
    def no_weight_decay(self):
        """timm's set (RPB tables) plus RoPE-Mixed frequencies."""
        names = set(super().no_weight_decay())
        names.update(n for n, _ in self.named_parameters() if '.pos_enc.' in n)
        return names

    def set_input_size(
            self,
            img_size: Optional[Union[int, Size]] = None,
            patch_size: Optional[Union[int, Size]] = None,
            window_size=None,
            window_ratio=None,
            always_partition: Optional[bool] = None,
    ) -> None:
        """timm's resize, with the windows of this model's rule: they scale with the grid (image size / 32)
        unless fixed by the constructor's ``window_size``; a ``window_size`` (fixed from now on) or
        ``window_ratio`` (scaling from now on) given here sets a new rule. Checked first so that a size the
        windows do not tile raises before anything changes. RPB tables are resampled as timm does; rotary and
        ALiBi encodings need nothing."""
        if window_size is None and window_ratio is None and self.fixed_windows:
            window_size = self._ref_window_sizes
        new_img = to_2tuple(img_size) if img_size is not None else self.patch_embed.img_size
        new_patch = to_2tuple(patch_size) if patch_size is not None else self.patch_embed.patch_size
        sizes, ratios = timm_swin.resolve_window_args(window_size, window_ratio, len(self.layers))
        grid = (new_img[0] // new_patch[0], new_img[1] // new_patch[1])
        windows = timm_swin.calc_stage_window_sizes(
            grid, self._ref_window_sizes, self._ref_grid_size, window_size=sizes, window_ratio=ratios)
        if always_partition is None:
            always_partition = self.layers[0].blocks[0].always_partition
        stage_windows(new_img, new_patch, windows, always_partition)
        super().set_input_size(img_size=img_size, patch_size=patch_size, window_size=window_size,
                               window_ratio=window_ratio, always_partition=always_partition)
        if window_size is not None or window_ratio is not None:
            self.fixed_windows = window_size is not None
        self._fitted_img_size = self.patch_embed.img_size
        if hasattr(self, 'pretrained_cfg'):
            set_cfg_input_size(self, self.patch_embed.img_size)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ):
        """timm's, plus ``output_fmt='NHWC'``, the stages' own layout."""
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        out = super().forward_intermediates(x, indices, norm=norm, stop_early=stop_early, output_fmt='NCHW',
                                            intermediates_only=intermediates_only)
        if output_fmt == 'NCHW':
            return out
        if intermediates_only:
            return [y.permute(0, 2, 3, 1) for y in out]
        return out[0], [y.permute(0, 2, 3, 1) for y in out[1]]


def checkpoint_filter_fn(state_dict, model: PositionalSwinTransformer):
    """timm's Swin filter (drops the rebuilt buffers, resamples the patch embedding, maps Microsoft's original
    layout), with RPB tables (and their recorded grids) moved to ``attn.pos_enc``, where the RPB module resizes
    them to the model's windows on load. RPB tables offered to a model without RPB are refused rather than
    dropped."""
    state_dict = state_dict.get('model', state_dict)
    state_dict = state_dict.get('state_dict', state_dict)
    rpb_names = ('relative_position_bias_table', GRID_BUFFER)
    tables = {k: v for k, v in state_dict.items() if k.endswith(rpb_names) and 'attn.' in k}
    if tables and model.attn_pos != 'rpb':
        raise ValueError(f'The checkpoint has relative position bias tables ({next(iter(tables))}, ...), which a '
                         f'{model.attn_pos} Swin has no place for; load it into an rpb model')
    out = timm_swin.checkpoint_filter_fn({k: v for k, v in state_dict.items() if k not in tables}, model)
    for key, value in tables.items():
        attn_key, name = key.rsplit('.', 1)
        out[f'{attn_key.removesuffix(".pos_enc")}.pos_enc.{name}'] = value
    return out


def _cfg(**kwargs):
    # fixed, as timm's Swin: other sizes need set_input_size() or dynamic_img_size=True
    return base_cfg(pool_size=(7, 7), classifier='head.fc', fixed_input_size=True, **kwargs)


# timm's swin_{tiny,small,base}_patch4_window7_224 geometry; the window follows the image size (7 at 224)
SIZES = {
    'tiny': dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    'small': dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    'base': dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}

default_cfgs = generate_default_cfgs({
    name: cfg
    for size in SIZES for enc in ATTN_POS
    for name, cfg in pretrained_cfgs(
        f'swin_{size}_{enc}', _cfg(paper_ids=tuple(dict.fromkeys((SWIN_PAPER, *ENCODINGS[enc].paper_ids)))),
        in1k=SWIN_IN1K.get(f'swin_{size}_{enc}')).items()
})


def _create_swin(variant: str, pretrained: bool = False, **kwargs) -> PositionalSwinTransformer:
    out_indices = kwargs.pop('out_indices', tuple(range(len(kwargs.get('depths', (2, 2, 6, 2))))))
    # a fixed window_size is taken to be the trained one; otherwise the checkpoint's windows (image size
    # / 32 at its input size) are the training grids rope_scaling needs
    return build_model(PositionalSwinTransformer, variant, pretrained, checkpoint_filter_fn,
                       default_feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
                       infer_rope_train_size=kwargs.get('window_size') is None, **kwargs)


for _size in SIZES:
    for _encoding in ATTN_POS:
        register_variant(f'swin_{_size}_{_encoding}', _create_swin,
                         dict(patch_size=4, attn_pos=_encoding, **SIZES[_size]),
                         f'Swin-{_size[0].upper()}, window = image size / 32, position encoding: {_encoding}.')
register_variant('swin_rope', _create_swin, dict(patch_size=4, attn_pos='rope_mixed', **SIZES['tiny']),
                 'Short name for swin_tiny_rope_mixed (same architecture, config and weights).',
                 arch='swin_tiny_rope_mixed')
