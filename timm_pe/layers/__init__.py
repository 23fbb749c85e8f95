"""Reusable pieces with no model code: the attention module, one module per position encoding, grid
coordinates with the table cache, and the registry that knows every encoding.

Rotary encodings (``kind = 'rotary'``) expose ``tables(grid, device) -> (cos, sin)``; bias encodings
(``kind = 'bias'``) expose ``bias(grid, num_prefix_tokens, device) -> (heads, N, N)`` (float, or bool for
a pure restriction); q/k encodings (``kind = 'qk'``) expose ``extend_qkv(q, k, v, grid, num_prefix_tokens)``,
whose outputs SDPA takes at ``scale=1`` with no mask. Absolute embeddings live in the model (timm's learned
``pos_embed``) or in ``sincos``.
"""
from .alibi2d import ALIBI_SLOPES, Alibi2d, alibi_slopes
from .alibi2d_sq import Alibi2dSquared
from .attention import PositionalAttention
from .grid import TABLE_CACHE, TableCache, grid_coords, grid_table, grid_table_builder
from .lookhere import LookHere
from .registry import (ATTENTION_ENCODINGS, ENCODINGS, OPTION_NAMES, Encoding, create_encoding, get_encoding,
                       takes_rope_scaling, resolve_options)
from .rope_axial import RopeAxial
from .rope_dinov3 import RopeDinoV3
from .rope_mixed import RopeMixed, init_mixed_frequencies
from .rotary import ROPE_SCALINGS, rope_rot_dim
from .rpb import RelativePositionBias, relative_position_index, resize_rpb_table, table_grid
from .sincos import sincos_2d_embed

__all__ = [
    'ALIBI_SLOPES', 'ATTENTION_ENCODINGS', 'Alibi2d', 'Alibi2dSquared', 'ENCODINGS', 'Encoding', 'LookHere',
    'OPTION_NAMES', 'PositionalAttention', 'ROPE_SCALINGS', 'RelativePositionBias', 'RopeAxial', 'RopeDinoV3',
    'RopeMixed', 'TABLE_CACHE', 'TableCache', 'alibi_slopes', 'create_encoding', 'get_encoding', 'grid_coords',
    'grid_table', 'grid_table_builder', 'init_mixed_frequencies', 'relative_position_index', 'resize_rpb_table',
    'resolve_options', 'rope_rot_dim', 'sincos_2d_embed', 'table_grid', 'takes_rope_scaling',
]
