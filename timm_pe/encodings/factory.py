"""Encodings by name, as the models configure them."""
from typing import Optional

from torch import nn

from ._grid import Grid
from .alibi2d import Alibi2d
from .rope_axial import RopeAxial
from .rope_mixed import RopeMixed
from .rpb import RelativePositionBias

ROTARY = ('rope_axial', 'rope_mixed')


def check_rope_args(attn_pos: Optional[str], **rope_args) -> None:
    """RoPE arguments given to a model without RoPE are a TypeError, like any argument it does not take."""
    given = sorted(k for k, v in rope_args.items() if v is not None)
    if attn_pos not in ROTARY and given:
        raise TypeError(f'{given} only apply to RoPE models, not attn_pos={attn_pos!r}')


def create_encoding(
        attn_pos: Optional[str],
        head_dim: int,
        num_heads: int,
        grid: Grid,
        rope_theta: Optional[float] = None,
        rope_fraction: Optional[float] = None,
        rope_scaling: Optional[str] = None,
        train_grid: Optional[Grid] = None,
) -> Optional[nn.Module]:
    """The encoding one attention layer over a ``grid`` of tokens carries (None for ``attn_pos=None``)."""
    if attn_pos == 'rope_axial':
        return RopeAxial(head_dim, rope_theta, rope_fraction or 1., rope_scaling or 'none', train_grid)
    if attn_pos == 'rope_mixed':
        return RopeMixed(head_dim, num_heads, rope_theta, rope_fraction or 1., rope_scaling or 'none', train_grid)
    if attn_pos == 'alibi2d':
        return Alibi2d(num_heads)
    if attn_pos == 'rpb':
        return RelativePositionBias(num_heads, grid)
    if attn_pos is None:
        return None
    raise ValueError(f'Unknown attn_pos {attn_pos!r}; allowed: {(None, *ROTARY, "alibi2d", "rpb")}')
