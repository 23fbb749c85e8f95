"""The eager autograd node both RoPE backends share: q, k and v leave one node, so one backward writes
all of the qkv gradient.

Were v a plain view of qkv outside the node, autograd would build v's gradient as a zero-filled
qkv-sized tensor and add it to the node's own (whose v slot would have to be zeroed first): three extra
passes over the whole qkv gradient per layer. Here the backend's backward copies v's gradient into its
slot while it writes q's and k's.

Where the caller may overwrite qkv (``apply_rope``'s ``overwrite_qkv``), the node rotates q and k in qkv's own
storage, in training too: nothing the rotation needs in its backward is lost (its inverse needs the tables
only, and the tables' gradients can be had from the rotated q and k), and nothing else keeps the unrotated ones.
"""
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

# FX symbolic tracing only (torch.export counts as compiling); older torch has the broader check alone
fx_symbolic_tracing = getattr(torch.fx._symbolic_trace, 'is_fx_symbolic_tracing', torch.fx._symbolic_trace.is_fx_tracing)

# forward(qkv, cos, sin, num_prefix_tokens, out) writes q and k rotated into out, a token-major
#   (B, N, 2, heads, head_dim) tensor, or into qkv's own q and k where out is None
RopeForward = Callable[[Tensor, Tensor, Tensor, int, Optional[Tensor]], None]
# backward(grad_q, grad_k, grad_v, qkv or None (None: no table gradients), cos, sin, num_prefix_tokens)
#   -> [dqkv] or [dqkv, dcos, dsin]
RopeBackward = Callable[[Tensor, Tensor, Tensor, Optional[Tensor], Tensor, Tensor, int], list]


def v_view(qkv: Tensor) -> Tensor:
    """v of a (B, N, 3, heads, head_dim) qkv as (B, heads, N, head_dim), a view: v is never copied."""
    return qkv[:, :, 2].transpose(1, 2)


class _RopeQKV(torch.autograd.Function):
    """With ``in_place`` q and k are rotated in qkv's own storage, so attention keeps no second q and k buffer
    alive (qkv stays alive through v in any case); the table gradients then come from the rotated q and k."""

    @staticmethod
    def forward(ctx, qkv, cos, sin, num_prefix_tokens, forward, backward, in_place):
        table_grad = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        ctx.rotated = in_place and (not table_grad or tables_invertible(cos, sin))
        q, k, v = _rotated_qkv(qkv, cos, sin, num_prefix_tokens, forward, ctx.rotated)
        ctx.num_prefix_tokens, ctx.backward = num_prefix_tokens, backward
        ctx.save_for_backward(qkv if table_grad else None, cos, sin)
        return q, k, v

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_q, grad_k, grad_v):
        qkv, cos, sin = ctx.saved_tensors
        # autograd materialises missing gradients as zeros; q's and k's arrive apart (from SDPA) and stay apart
        grads = ctx.backward(grad_q, grad_k, grad_v, qkv, cos, sin, ctx.num_prefix_tokens)
        dcos, dsin = grads[1:] if qkv is not None else (None, None)
        if qkv is not None and ctx.rotated:
            dcos, dsin = unrotated_table_grads(dcos, dsin, cos, sin)
        return grads[0], dcos, dsin, None, None, None, None


def _rotated_qkv(qkv: Tensor, cos: Tensor, sin: Tensor, num_prefix_tokens: int, forward: RopeForward,
                 in_place: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """q, k rotated by ``forward`` into a new token-major buffer or, ``in_place``, into qkv; v a view of qkv."""
    B, N, _, H, D = qkv.shape
    qk = qkv[:, :, :2] if in_place else qkv.new_empty((B, N, 2, H, D))
    forward(qkv, cos, sin, num_prefix_tokens, None if in_place else qk)
    return qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2), v_view(qkv)


def tables_invertible(cos: Tensor, sin: Tensor) -> bool:
    """Whether every entry t = cos + i sin has a modulus in [2^-20, 2^20], so that x = y / t recovers what y = x t
    was rotated from, to float32 precision. (On a GPU the answer costs a device sync; meta tensors hold no
    values to be wrong.)"""
    if cos.device.type == 'meta':
        return True
    modulus = torch.hypot(cos.detach(), sin.detach())
    return bool(((modulus >= 2 ** -20) & (modulus <= 2 ** 20)).all())


def unrotated_table_grads(dcos: Tensor, dsin: Tensor, cos: Tensor, sin: Tensor) -> Tuple[Tensor, Tensor]:
    """The table gradients sum(g conj(x)) from the sums a backward took over rotated y = x t in place of x:
    dcos + i dsin = sum(g conj(y)) / conj(t), with t = cos + i sin the same for every term summed (any batch
    entry, q or k, any head a shared table serves)."""
    cos, sin = cos.detach(), sin.detach()
    modulus2 = cos * cos + sin * sin
    return (dcos * cos - dsin * sin) / modulus2, (dcos * sin + dsin * cos) / modulus2


def records_grad(*tensors: Optional[Tensor]) -> bool:
    """Whether autograd records an op on these tensors (None skipped): else no node is needed."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def rope_qkv_eager(qkv: Tensor, cos: Tensor, sin: Tensor, num_prefix_tokens: int, forward: RopeForward,
                   backward: RopeBackward, overwrite_qkv: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """q, k rotated by ``forward`` and v a view of qkv, with ``backward`` as their one backward node; with
    ``overwrite_qkv`` (nothing else reads qkv's q and k, and no op saved them for its backward) q and k are
    rotated in qkv's storage and returned as views of it, unless autograd records and qkv is (a view of) a
    leaf that requires grad.

    With no gradient to record (inference) the node is skipped: the forward alone runs.
    """
    if records_grad(qkv, cos, sin):
        base = qkv if qkv._base is None else qkv._base  # autograd's own rule: no in-place op on a leaf that trains
        in_place = overwrite_qkv and not (base.is_leaf and base.requires_grad)
        return _RopeQKV.apply(qkv, cos, sin, num_prefix_tokens, forward, backward, in_place)
    return _rotated_qkv(qkv, cos, sin, num_prefix_tokens, forward, overwrite_qkv)
