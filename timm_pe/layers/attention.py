"""The one attention module every model here uses."""
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..ops import apply_rope
from ..ops.apply_rope import projected_rope_applies
from ..ops.rope_autograd import fx_symbolic_tracing
from ..ops.rope_torch import pair_order, rope_qkv_projected

torch.fx.wrap('apply_rope')


def merge_masks(bias: torch.Tensor, attn_mask: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """An encoding's bias (float, or a bool mask of what may be seen) combined with a caller's mask."""
    if bias.dtype == torch.bool:
        if attn_mask is None:
            return bias
        bias = torch.zeros(bias.shape, dtype=dtype, device=bias.device).masked_fill_(~bias, float('-inf'))
    bias = bias.to(dtype)
    return bias if attn_mask is None else bias + attn_mask


torch.fx.wrap('merge_masks')


def unobserved(module: nn.Module) -> bool:
    """Whether a module's call is seen by its caller alone: no forward hook or pre-hook (its own or global)
    sees its input or output, and no tracer records it. Then the caller may overwrite the output in place,
    or compute it another way."""
    if torch.compiler.is_compiling() or fx_symbolic_tracing() or torch.jit.is_tracing():
        return False
    # torch has no public way to list hooks: where these private dicts are gone, assume a hook
    hook_dicts = [getattr(module, '_forward_hooks', None), getattr(module, '_forward_pre_hooks', None),
                  getattr(nn.modules.module, '_global_forward_hooks', None),
                  getattr(nn.modules.module, '_global_forward_pre_hooks', None)]
    return all(hooks is not None and not hooks for hooks in hook_dicts)


class PositionalAttention(nn.Module):
    """Multi-head self-attention carrying one position encoding, always through SDPA.

    Rotary encodings rotate q and k (prefix tokens excepted) on the way out of the fused qkv projection
    and pass no mask, so the fused SDPA backends stay usable; bias encodings (ALiBi, RPB, LookHere) go in
    as ``attn_mask``; q/k encodings (``kind = 'qk'``, squared 2D ALiBi) extend q, k and v with extra
    dimensions and also pass no mask. Parameter names match timm's ``Attention`` so timm checkpoints load
    unchanged, and the constructor takes timm's ``Attention`` arguments so timm's blocks build it
    (``norm_layer`` only serves ``qk_norm`` and ``scale_norm``, which are refused). ``reparameterize()``
    readies a rotary layer for CPU inference.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = False,
            qk_norm: bool = False,
            scale_norm: bool = False,
            proj_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            norm_layer: Optional[nn.Module] = None,
            pos_enc: Optional[nn.Module] = None,
            num_prefix_tokens: int = 0,
            device=None,
            dtype=None,
    ):
        super().__init__()
        if qk_norm or scale_norm:
            raise ValueError('PositionalAttention supports neither qk_norm nor scale_norm')
        if dim % num_heads:
            raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}')
        dd = {'device': device, 'dtype': dtype}
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.qkv_pair_order = False
        self.set_position_encoding(pos_enc, num_prefix_tokens)
        self.register_state_dict_post_hook(_qkv_rows_in_usual_order)
        self.register_load_state_dict_pre_hook(_qkv_rows_in_pair_order)

    def set_position_encoding(self, pos_enc: Optional[nn.Module], num_prefix_tokens: int = 0) -> None:
        """Attach the encoding (its ``kind`` tells rotary from bias) and the count of prefix tokens, which are
        never rotated and get no bias."""
        if self.qkv_pair_order:
            raise ValueError('This attention layer is reparameterized (its qkv rows are in pair order for its '
                             'encoding): set the position encoding before reparameterize()')
        self.pos_enc = pos_enc
        self.num_prefix_tokens = num_prefix_tokens

    def forward(
            self,
            x: torch.Tensor,
            grid: Tuple[int, int],
            attn_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x: (B, N, C) with N = prefix + H*W tokens of the patch ``grid`` (H, W) in raster order."""
        return self.attend(x, grid, attn_mask)

    def attend(self, x: torch.Tensor, grid: Tuple[int, int], attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """The attention itself, for subclasses' ``forward`` to call (TorchScript compiles no ``super()``)."""
        B, N, C = x.shape
        pos_enc = self.pos_enc
        scale: Optional[float] = None
        # rotary encodings have tables(), q/k encodings extend_qkv(), bias encodings bias(); TorchScript
        # resolves hasattr while compiling, so it never compiles a call an encoding does not have
        if pos_enc is None:
            q, k, v = self._project(x).permute(2, 0, 3, 1, 4).unbind(0)
        elif hasattr(pos_enc, 'tables'):
            cos, sin = pos_enc.tables(grid, x.device)
            if torch.jit.is_scripting():  # no hooks, no fold: apply_rope's own TorchScript path
                q, k, v = apply_rope(self._project(x), cos, sin, self.num_prefix_tokens, None, False,
                                     self.qkv_pair_order)
            else:
                q, k, v = self._rotary_qkv(x, cos, sin)
        else:
            q, k, v = self._project(x).permute(2, 0, 3, 1, 4).unbind(0)
            if hasattr(pos_enc, 'extend_qkv'):
                q, k, v = pos_enc.extend_qkv(q, k, v, grid, self.num_prefix_tokens)
                scale = 1.
            else:
                attn_mask = merge_masks(pos_enc.bias(grid, self.num_prefix_tokens, x.device), attn_mask, q.dtype)
        x = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attn_mask,
            dropout_p=self.attn_drop.p if self.training else 0.,
            scale=scale,
        )
        x = x[..., :self.head_dim].transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """The qkv projection of x (B, N, C) as (B, N, 3, heads, head_dim)."""
        return self.qkv(x).view(x.shape[0], x.shape[1], 3, self.num_heads, self.head_dim)

    def _rotary_qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v with q and k rotated, in eager mode.

        Where nothing observes the qkv projection, float32 on the CPU (inference and training) folds the
        rotation into a pair-ordered copy of a plain ``nn.Linear`` projection (``rope_qkv_projected``), and
        elsewhere ``apply_rope`` rotates q and k in the fresh projection output (in training, only a plain
        ``nn.Linear``'s). Where a hook sees
        the projection (forward hook or pre-hook), it runs as called and its output is left as it wrote it;
        a projection that is not a plain ``nn.Linear`` (LoRA, parametrized, quantized, or with its
        ``forward`` replaced on the instance, as accelerate's offloading does) is called too. A
        reparameterized projection is called as it is, already in pair order.
        """
        plain_linear = type(self.qkv) is nn.Linear and 'forward' not in vars(self.qkv)
        # in training, only a plain linear layer is known to save nothing of its output for its backward
        overwrite = unobserved(self.qkv) and (plain_linear or not torch.is_grad_enabled())
        if self.qkv_pair_order:
            return apply_rope(self._project(x), cos, sin, self.num_prefix_tokens, None, overwrite, pair_order=True)
        if overwrite and plain_linear and projected_rope_applies(x, self.qkv.weight, self.qkv.bias, cos, sin):
            return rope_qkv_projected(x, self.qkv.weight, self.qkv.bias, cos, sin, self.num_heads,
                                      self.num_prefix_tokens)
        return apply_rope(self._project(x), cos, sin, self.num_prefix_tokens, None, overwrite)

    @torch.jit.unused
    def reparameterize(self) -> None:
        """For inference, as timm's ``reparameterize_model`` (``validate.py`` / ``benchmark.py --reparam``) calls
        it: keep the qkv projection's q and k rows in ``pair_order`` for the rotary encoding, so that CPU
        float32 inference rotates with one complex multiply without gathering the weight on every call.

        ``state_dict()`` still holds, and ``load_state_dict`` still takes, the usual (rotate-half) order, so
        checkpoints move between reparameterized and plain models unchanged. ``apply_rope`` rotates the pairs
        on every backend: eager PyTorch by complex multiplies (training too), TorchScript and export by an
        expression, and on a GPU the Triton kernel. Nothing changes without a rotary encoding, or where the
        projection is not a plain ``nn.Linear`` (LoRA and the like: their own weights are in the usual order).
        """
        if self.qkv_pair_order or not hasattr(self.pos_enc, 'tables') or type(self.qkv) is not nn.Linear:
            return
        rows = self._pair_rows()
        with torch.no_grad():
            for param in (self.qkv.weight, self.qkv.bias):
                if param is not None:
                    param.copy_(param.index_select(0, rows.to(param.device)))
        self.qkv_pair_order = True

    @torch.jit.unused
    def _pair_rows(self) -> torch.Tensor:
        return pair_order(self.num_heads, self.head_dim, self.pos_enc.rot_dim)


def _qkv_rows_in_usual_order(module: PositionalAttention, state_dict, prefix: str, local_metadata) -> None:
    """state_dict post-hook: a reparameterized layer saves its qkv rows in the usual order."""
    if module.qkv_pair_order:
        _reorder_qkv_rows(state_dict, prefix, torch.argsort(module._pair_rows()))


def _qkv_rows_in_pair_order(module: PositionalAttention, state_dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: a reparameterized layer takes qkv rows in the usual order."""
    if module.qkv_pair_order:
        _reorder_qkv_rows(state_dict, prefix, module._pair_rows())


def _reorder_qkv_rows(state_dict, prefix: str, rows: torch.Tensor) -> None:
    for key in (f'{prefix}qkv.weight', f'{prefix}qkv.bias'):
        if key in state_dict:
            state_dict[key] = state_dict[key].index_select(0, rows.to(state_dict[key].device))
