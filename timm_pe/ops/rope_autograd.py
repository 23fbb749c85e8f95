"""The eager autograd node both RoPE backends share: q, k and v leave one node, so one backward writes
all of the qkv gradient.

Were v a plain view of qkv outside the node, autograd would build v's gradient as a zero-filled
qkv-sized tensor and add it to the node's own (whose v slot would have to be zeroed first): three extra
passes over the whole qkv gradient per layer. Here the backend's backward copies v's gradient into its
slot while it writes q's and k's.
"""
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

# FX symbolic tracing only (torch.export counts as compiling); older torch has the broader check alone
fx_symbolic_tracing = getattr(torch.fx._symbolic_trace, 'is_fx_symbolic_tracing', torch.fx._symbolic_trace.is_fx_tracing)

# forward(qkv, cos, sin, num_prefix_tokens) -> rotated q and k as one (2, B, heads, N, head_dim) tensor
RopeForward = Callable[[Tensor, Tensor, Tensor, int], Tensor]
# backward(grad_q, grad_k, grad_v, qkv or None (None: no table gradients), cos, sin, num_prefix_tokens)
#   -> [dqkv] or [dqkv, dcos, dsin]
RopeBackward = Callable[[Tensor, Tensor, Tensor, Optional[Tensor], Tensor, Tensor, int], list]


def v_view(qkv: Tensor) -> Tensor:
    """v of a (B, N, 3, heads, head_dim) qkv as (B, heads, N, head_dim), a view: v is never copied."""
    return qkv[:, :, 2].transpose(1, 2)


class _RopeQKV(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, cos, sin, num_prefix_tokens, forward, backward):
        ctx.num_prefix_tokens, ctx.backward = num_prefix_tokens, backward
        ctx.save_for_backward(qkv, cos, sin)  # no extra memory: attention keeps qkv alive through the v view
        q, k = forward(qkv, cos, sin, num_prefix_tokens).unbind(0)
        return q, k, v_view(qkv)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_q, grad_k, grad_v):
        qkv, cos, sin = ctx.saved_tensors
        table_grad = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        # autograd materialises missing gradients as zeros; q's and k's arrive apart (from SDPA) and stay apart
        grads = ctx.backward(grad_q, grad_k, grad_v, qkv if table_grad else None, cos, sin, ctx.num_prefix_tokens)
        dcos, dsin = grads[1:] if table_grad else (None, None)
        return grads[0], dcos, dsin, None, None, None


def records_grad(*tensors: Optional[Tensor]) -> bool:
    """Whether autograd records an op on these tensors (None skipped): else no node is needed, and q, k may even
    be rotated in place."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def rope_qkv_eager(qkv: Tensor, cos: Tensor, sin: Tensor, num_prefix_tokens: int, forward: RopeForward,
                   backward: RopeBackward) -> Tuple[Tensor, Tensor, Tensor]:
    """q, k rotated by ``forward`` and v a view of qkv, with ``backward`` as their one backward node.

    With no gradient to record (inference) the node is skipped: the forward alone runs.
    """
    if records_grad(qkv, cos, sin):
        return _RopeQKV.apply(qkv, cos, sin, num_prefix_tokens, forward, backward)
    q, k = forward(qkv, cos, sin, num_prefix_tokens).unbind(0)
    return q, k, v_view(qkv)
