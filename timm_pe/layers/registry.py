"""Every position encoding by name: its kind, the papers it comes from, the options it takes and their
defaults per model family. Models, the command line and the README's model table all read this one table;
adding an encoding is its module plus one entry here."""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

from torch import nn

from .alibi2d import Alibi2d
from .alibi2d_sq import Alibi2dSquared
from .grid import Grid
from .lookhere import LookHere
from .rope_axial import RopeAxial
from .rope_dinov3 import RopeDinoV3
from .rope_mixed import RopeMixed
from .rpb import RelativePositionBias

KINDS = ('absolute', 'rotary', 'bias', 'qk')
FAMILIES = ('vit', 'swin')


@dataclass(frozen=True)
class Encoding:
    """One position encoding.

    ``build(head_dim, num_heads, grid, train_grid, layer, depth, **options)`` makes the module attention
    layer ``layer`` of ``depth`` carries (None for absolute encodings, which the model adds to its tokens).
    ``options`` are the model keyword arguments it takes, each with its default per family (``None``: the
    encoding's own default). A ``shared`` encoding is built once (for layer 0) and serves every layer.
    """
    name: str
    kind: str
    title: str
    paper_ids: Tuple[str, ...]
    build: Optional[Callable[..., nn.Module]] = None
    options: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    families: Tuple[str, ...] = ('vit',)
    shared: bool = False


def _rope_axial(head_dim, num_heads, grid, train_grid, layer, depth, rope_theta, rope_fraction, rope_scaling):
    return RopeAxial(head_dim, rope_theta, rope_fraction, rope_scaling, train_grid)


def _rope_mixed(head_dim, num_heads, grid, train_grid, layer, depth, rope_theta, rope_fraction, rope_scaling):
    return RopeMixed(head_dim, num_heads, rope_theta, rope_fraction, rope_scaling, train_grid)


def _rope_dinov3(head_dim, num_heads, grid, train_grid, layer, depth, rope_theta, rope_fraction, rope_shift_coords,
                 rope_jitter_coords, rope_rescale_coords):
    return RopeDinoV3(head_dim, rope_theta, rope_fraction, rope_shift_coords, rope_jitter_coords,
                      rope_rescale_coords)


def _lookhere(head_dim, num_heads, grid, train_grid, layer, depth, lookhere_directions, lookhere_global_slope,
              lookhere_layer_slopes):
    return LookHere(num_heads, layer, depth, lookhere_directions, lookhere_global_slope, lookhere_layer_slopes)


def _rope_options(vit_theta: float, swin_theta: float) -> Dict[str, Dict[str, Any]]:
    return {
        'rope_theta': {'vit': vit_theta, 'swin': swin_theta},
        'rope_fraction': {'vit': 1., 'swin': 1.},
        'rope_scaling': {'vit': 'none', 'swin': 'none'},
    }


def _alibi2d(head_dim, num_heads, grid, train_grid, layer, depth, alibi_slopes):
    return Alibi2d(num_heads, alibi_slopes)


ROPE_PAPER = 'arXiv:2403.13298'
ENCODINGS: Dict[str, Encoding] = {e.name: e for e in (
    Encoding('ape', 'absolute', 'learned absolute embedding (the standard ViT baseline)',
             ('arXiv:2010.11929', 'arXiv:2204.07118')),
    Encoding('sincos', 'absolute', 'fixed 2D sin-cos absolute embedding, computed for the actual grid',
             ('arXiv:2010.11929',)),
    Encoding('rope_axial', 'rotary', 'RoPE-Axial: fixed frequencies, half the pairs along x, half along y',
             (ROPE_PAPER,), _rope_axial, _rope_options(100., 50.), FAMILIES),
    Encoding('rope_mixed', 'rotary', 'RoPE-Mixed: learnable per-layer, per-head 2D frequencies',
             (ROPE_PAPER,), _rope_mixed, _rope_options(10., 10.), FAMILIES),
    Encoding('alibi2d', 'bias', '2D ALiBi: Euclidean patch distance times per-head slopes',
             ('arXiv:2311.00566', 'arXiv:2108.12409'), _alibi2d, {'alibi_slopes': {'vit': 'press', 'swin': 'press'}},
             FAMILIES),
    Encoding('rpb', 'bias', 'learned relative position bias table over every patch offset',
             ('arXiv:2103.14030',), lambda head_dim, num_heads, grid, *_: RelativePositionBias(num_heads, grid),
             families=FAMILIES),
    Encoding('alibi2d_sq', 'qk', '2D ALiBi with squared distance, as extra q/k dims: no attention mask',
             ('arXiv:2311.00566', 'arXiv:2108.12409'), lambda head_dim, num_heads, *_: Alibi2dSquared(head_dim, num_heads)),
    Encoding('lookhere', 'bias', 'LookHere: each head looks one 2D direction, distance penalty per head and layer',
             ('arXiv:2405.13985',), _lookhere,
             {'lookhere_directions': {'vit': 'halves'}, 'lookhere_global_slope': {'vit': 1.},
              'lookhere_layer_slopes': {'vit': (1.5, .5)}}),
    Encoding('rope_dinov3', 'rotary', 'DINOv3 RoPE: coordinates normalised to [-1, 1], train-time shift/jitter/rescale',
             ('arXiv:2508.10104',), _rope_dinov3,
             {'rope_theta': {'vit': 100.}, 'rope_fraction': {'vit': 1.}, 'rope_shift_coords': {'vit': None},
              'rope_jitter_coords': {'vit': None}, 'rope_rescale_coords': {'vit': 2.}}, shared=True),
)}
ATTENTION_ENCODINGS = tuple(name for name, e in ENCODINGS.items() if e.kind != 'absolute')
OPTION_NAMES = tuple(dict.fromkeys(o for e in ENCODINGS.values() for o in e.options))


def get_encoding(name: str) -> Encoding:
    if name not in ENCODINGS:
        raise ValueError(f'Unknown position encoding {name!r}; allowed: {tuple(ENCODINGS)}')
    return ENCODINGS[name]


def takes_rope_scaling(attn_pos: Optional[str]) -> bool:
    """Whether ``attn_pos`` has RoPE's test-time hooks (``rope_scaling``, which refer to the training grid)."""
    return attn_pos is not None and 'rope_scaling' in get_encoding(attn_pos).options


def resolve_options(attn_pos: Optional[str], family: str, given: Dict[str, Any]) -> Dict[str, Any]:
    """The options ``attn_pos`` takes, with the family defaults filled in where ``given`` has None.

    An option given (not None) to an encoding that does not take it is a TypeError, like any argument a
    model does not take.
    """
    allowed = get_encoding(attn_pos).options if attn_pos is not None else {}
    stray = sorted(k for k, v in given.items() if v is not None and k not in allowed)
    if stray:
        raise TypeError(f'{stray} do not apply to attn_pos={attn_pos!r}; it takes {sorted(allowed) or "no options"}')
    return {k: given[k] if given.get(k) is not None else defaults[family] for k, defaults in allowed.items()}


def create_encoding(attn_pos: Optional[str], head_dim: int, num_heads: int, grid: Grid,
                    train_grid: Optional[Grid] = None, layer: int = 0, depth: int = 1,
                    **options) -> Optional[nn.Module]:
    """The encoding module attention layer ``layer`` of ``depth`` over a ``grid`` of tokens carries (None for
    ``attn_pos=None``); only depth-dependent encodings (LookHere's layer slopes) look at the layer."""
    if attn_pos is None:
        return None
    encoding = get_encoding(attn_pos)
    if encoding.build is None:
        raise ValueError(f'{attn_pos!r} is an absolute encoding, not one attention carries; '
                         f'allowed: {ATTENTION_ENCODINGS}')
    return encoding.build(head_dim, num_heads, grid, train_grid, layer, depth, **options)
