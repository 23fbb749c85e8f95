"""Position encodings, one module each; none of them knows about models.

Rotary encodings (``is_rotary = True``) expose ``tables(grid, device) -> (cos, sin)``; bias encodings
expose ``bias(grid, num_prefix_tokens, device, dtype) -> (heads, N, N)``. Absolute embeddings live in
the model (timm's learned ``pos_embed``) or in ``sincos``.
"""
from ._grid import TABLE_CACHE, GridCache, grid_coords
from .alibi2d import Alibi2d, alibi_slopes
from .factory import ROTARY, check_rope_args, create_encoding
from .rope import ROPE_SCALINGS, rope_rot_dim
from .rope_axial import RopeAxial
from .rope_mixed import RopeMixed, init_mixed_frequencies
from .rpb import RelativePositionBias, relative_position_index, resize_rpb_table
from .sincos import sincos_2d_embed
