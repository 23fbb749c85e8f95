"""Fused RoPE in Triton: one launch splits the qkv projection and rotates q and k.

Layout conventions are those of ``rope_torch``. The kernels run on CUDA, or on CPU tensors under
``TRITON_INTERPRET=1`` (which is how the tests run them). They are wrapped as ``torch.library``
custom ops with fake and autograd registrations so ``torch.compile(fullgraph=True)`` and
``torch.fx.symbolic_trace`` see one opaque node instead of a Triton launch.
"""
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

# Elements per (tokens x head_dim) tile; each program rotates one such tile of q and of k.
_TILE = 4096


@triton.jit
def _rope_tile(COS, SIN, pid_n, h, N, P, HALF, stride_th, stride_tn, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Token rows, head-dim columns, rotation mask, rotate-half partner column and table values of a tile."""
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    lower = d < HALF
    rot = (n >= P) & (n < N) & (d < 2 * HALF)
    partner = tl.where(lower, d + HALF, d - HALF)
    t = h * stride_th + (n - P) * stride_tn + tl.where(lower, d, d - HALF)
    c = tl.load(COS + t, mask=rot, other=1.0)
    s = tl.load(SIN + t, mask=rot, other=0.0)
    return n, d, lower, rot, partner, c, s


@triton.jit
def _rope_fwd_kernel(
        QKV, OUT, COS, SIN, N, D, P, HALF,
        stride_xb, stride_xn, stride_x3, stride_xh, stride_xd,
        stride_y2, stride_yb, stride_yh, stride_yn,
        stride_th, stride_tn,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """y1 = x1 cos - x2 sin, y2 = x2 cos + x1 sin for q and k of one (token block, head, batch)."""
    pid_n, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    n, d, lower, rot, partner, c, s = _rope_tile(COS, SIN, pid_n, h, N, P, HALF, stride_th, stride_tn, BLOCK_N, BLOCK_D)
    s = tl.where(lower, -s, s)
    mask = (n < N) & (d < D)
    for i in tl.static_range(2):
        x_ptr = QKV + b * stride_xb + i * stride_x3 + h * stride_xh + n * stride_xn
        x = tl.load(x_ptr + d * stride_xd, mask=mask).to(tl.float32)
        x_partner = tl.load(x_ptr + partner * stride_xd, mask=rot).to(tl.float32)
        y = tl.where(rot, x * c + x_partner * s, x)
        y_ptr = OUT + i * stride_y2 + b * stride_yb + h * stride_yh + n * stride_yn + d
        tl.store(y_ptr, y.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _rope_bwd_kernel(
        DY, QKV, DQKV, COS, SIN, DCOS, DSIN, N, D, P, HALF, R,
        stride_g2, stride_gb, stride_gh, stride_gn, stride_gd,
        stride_xb, stride_xn, stride_x3, stride_xh, stride_xd,
        stride_db, stride_dn, stride_d3, stride_dh,
        stride_th, stride_tn,
        TABLE_GRAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dx = inverse rotation of dy (zeros in the v slot); with TABLE_GRAD, this tile's part of dcos, dsin.

    dcos = dy1 x1 + dy2 x2 and dsin = dy2 x1 - dy1 x2, summed over q and k here and over batch and heads
    by the caller from the (batch, heads, rows, half) partials, which keeps the result deterministic.
    """
    pid_n, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    n, d, lower, rot, partner, c, s = _rope_tile(COS, SIN, pid_n, h, N, P, HALF, stride_th, stride_tn, BLOCK_N, BLOCK_D)
    s = tl.where(lower, s, -s)
    mask = (n < N) & (d < D)
    dx_ptr = DQKV + b * stride_db + h * stride_dh + n * stride_dn + d
    dcos = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dsin = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for i in tl.static_range(2):
        dy_ptr = DY + i * stride_g2 + b * stride_gb + h * stride_gh + n * stride_gn
        dy = tl.load(dy_ptr + d * stride_gd, mask=mask).to(tl.float32)
        dy_partner = tl.load(dy_ptr + partner * stride_gd, mask=rot).to(tl.float32)
        dx = tl.where(rot, dy * c + dy_partner * s, dy)
        tl.store(dx_ptr + i * stride_d3, dx.to(DQKV.dtype.element_ty), mask=mask)
        if TABLE_GRAD:
            x_ptr = QKV + b * stride_xb + i * stride_x3 + h * stride_xh + n * stride_xn
            x = tl.load(x_ptr + d * stride_xd, mask=mask).to(tl.float32)
            x_partner = tl.load(x_ptr + partner * stride_xd, mask=rot).to(tl.float32)
            dcos += dy * x + dy_partner * x_partner
            dsin += dy_partner * x - dy * x_partner
    tl.store(dx_ptr + 2 * stride_d3, tl.zeros((BLOCK_N, BLOCK_D), dtype=DQKV.dtype.element_ty), mask=mask)
    if TABLE_GRAD:
        t = (b * tl.num_programs(1) + h) * R * HALF + (n - P) * HALF + d
        tl.store(DCOS + t, dcos, mask=rot & lower)
        tl.store(DSIN + t, dsin, mask=rot & lower)


def _grid_and_blocks(qkv: Tensor):
    B, N, _, H, D = qkv.shape
    block_d = triton.next_power_of_2(D)
    block_n = min(triton.next_power_of_2(N), max(1, _TILE // block_d))
    return (triton.cdiv(N, block_n), H, B), dict(BLOCK_N=block_n, BLOCK_D=block_d)


def _table_strides(cos: Tensor) -> Tuple[int, int]:
    """Head and row strides of the (contiguous) tables; head stride 0 when one table serves all heads."""
    return (cos.stride(0) if cos.shape[0] > 1 else 0), cos.stride(1)


@torch.library.custom_op('timm_pe::rope_qkv', mutates_args=())
def _rope_qkv(qkv: Tensor, cos: Tensor, sin: Tensor, num_prefix_tokens: int) -> Tensor:
    """Rotated q and k as one (2, B, heads, N, head_dim) buffer (ops may not return views of qkv)."""
    B, N, _, H, D = qkv.shape
    cos, sin = cos.contiguous(), sin.contiguous()
    out = qkv.new_empty((2, B, H, N, D))
    grid, blocks = _grid_and_blocks(qkv)
    with torch.cuda.device_of(qkv):
        _rope_fwd_kernel[grid](
            qkv, out, cos, sin, N, D, num_prefix_tokens, cos.shape[-1],
            *qkv.stride(), *out.stride()[:4], *_table_strides(cos), **blocks)
    return out


@_rope_qkv.register_fake
def _(qkv, cos, sin, num_prefix_tokens):
    B, N, _, H, D = qkv.shape
    return qkv.new_empty((2, B, H, N, D))


@torch.library.custom_op('timm_pe::rope_qkv_backward', mutates_args=())
def _rope_qkv_backward(
        grad: Tensor, cos: Tensor, sin: Tensor, num_prefix_tokens: int, qkv: Optional[Tensor],
) -> List[Tensor]:
    """[dqkv], or [dqkv, dcos, dsin] when qkv is given (it is only needed for the table gradients)."""
    _, B, H, N, D = grad.shape
    cos, sin = cos.contiguous(), sin.contiguous()
    R, half = cos.shape[1:]
    dqkv = grad.new_empty((B, N, 3, H, D))
    table_grad = qkv is not None
    partials = [cos.new_empty((B, H, R, half) if table_grad else 0) for _ in range(2)]
    grid, blocks = _grid_and_blocks(dqkv)
    with torch.cuda.device_of(grad):
        _rope_bwd_kernel[grid](
            grad, grad if qkv is None else qkv, dqkv, cos, sin, *partials, N, D, num_prefix_tokens, half, R,
            *grad.stride(), *(grad if qkv is None else qkv).stride(), *dqkv.stride()[:4], *_table_strides(cos),
            TABLE_GRAD=table_grad, **blocks)
    if not table_grad:
        return [dqkv]
    heads = (0, 1) if cos.shape[0] == 1 else 0
    return [dqkv] + [p.sum(heads).view_as(cos) for p in partials]


@_rope_qkv_backward.register_fake
def _(grad, cos, sin, num_prefix_tokens, qkv):
    _, B, H, N, D = grad.shape
    dqkv = grad.new_empty((B, N, 3, H, D))
    return [dqkv] if qkv is None else [dqkv, torch.empty_like(cos), torch.empty_like(sin)]


def _setup_context(ctx, inputs, output):
    qkv, cos, sin, num_prefix_tokens = inputs
    ctx.num_prefix_tokens = num_prefix_tokens
    ctx.save_for_backward(qkv, cos, sin)  # no extra memory: attention keeps qkv alive through the v view


def _backward(ctx, grad):
    qkv, cos, sin = ctx.saved_tensors
    table_grad = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
    grads = torch.ops.timm_pe.rope_qkv_backward(grad, cos, sin, ctx.num_prefix_tokens, qkv if table_grad else None)
    dcos, dsin = grads[1:] if table_grad else (None, None)
    return grads[0], dcos, dsin, None


_rope_qkv.register_autograd(_backward, setup_context=_setup_context)


def rope_qkv_triton(
        qkv: Tensor,
        cos: Tensor,
        sin: Tensor,
        num_prefix_tokens: int = 0,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Triton counterpart of ``rope_qkv_torch``: q, k rotated in one launch; v a view of qkv, never copied."""
    qk = torch.ops.timm_pe.rope_qkv(qkv, cos, sin, num_prefix_tokens)
    return qk[0], qk[1], qkv[:, :, 2].transpose(1, 2)
