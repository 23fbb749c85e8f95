"""Fused RoPE in Triton: one launch splits the qkv projection and rotates q and k.

Layout conventions are those of ``rope_torch``. The kernels run on CUDA, or on CPU tensors under
``TRITON_INTERPRET=1`` (which is how the tests run them). They are wrapped as ``torch.library``
custom ops with fake and autograd registrations so ``torch.compile(fullgraph=True)`` and
``torch.fx.symbolic_trace`` see one opaque node instead of a Triton launch; eager, they run inside the
autograd node of ``rope_autograd`` instead, whose backward also takes v's gradient.

Both kernels take the rotate-half layout or, with ``pairs``, the pair order of a reparameterized projection.
Tile height (tokens per program) and warps are picked by Triton's autotuner per head dim, dtype and layout
(and, backward, per table-gradient and dv variant) from ``_CONFIGS``, pruned to tiles of 512 to 16384
elements; the first call of each key times the survivors on the GPU (an in-place launch gets its q and k back
after each timed run).
"""
import functools
import os
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .rope_autograd import fx_symbolic_tracing, rope_qkv_eager, v_view

# (tokens per tile, warps): small tiles for short sequences and narrow heads, tall ones for big launches
_CONFIGS = [triton.Config({'BLOCK_N': n}, num_warps=w) for n, w in
            ((8, 2), (16, 4), (32, 4), (64, 4), (64, 8), (128, 8))]
# the tile of 4096 elements the interpreter runs (it cannot time configs)
_INTERPRETER_TILE = 4096


def _prune_configs(configs, named_args, **kwargs):
    """Configs whose tile (BLOCK_N x BLOCK_D) holds 512 to 16384 elements and is no taller than the
    sequence; under the interpreter only the one nearest ``_INTERPRETER_TILE`` elements."""
    block_d, tokens = kwargs['BLOCK_D'], max(8, triton.next_power_of_2(named_args['N']))

    def tile(config):
        return config.kwargs['BLOCK_N'] * block_d

    fitting = [c for c in configs if c.kwargs['BLOCK_N'] <= tokens and 512 <= tile(c) <= 16384]
    fitting = fitting or [min(configs, key=lambda c: abs(tile(c) - _INTERPRETER_TILE))]
    if os.environ.get('TRITON_INTERPRET') == '1':
        return [min(fitting, key=lambda c: abs(tile(c) - _INTERPRETER_TILE))]
    return fitting


def _untimed(kernel_call, quantiles):
    return [0.] * len(quantiles)


def _autotune(*keys, **hooks):
    # the interpreter keeps one config and has no device to time it on; Triton before 3.8 would time it anyway
    do_bench = _untimed if os.environ.get('TRITON_INTERPRET') == '1' else None
    return triton.autotune(configs=_CONFIGS, key=['D', *keys], prune_configs_by={'early_config_prune': _prune_configs},
                           do_bench=do_bench, **hooks)


def _in_place_restoring_hooks():
    """Autotuner hooks for the forward kernel: timing a config reruns the launch, so an in-place one (OUT in
    QKV's storage) gets its q and k back after each run, or they would come out rotated once per run; an
    out-of-place launch is timed with no copies in its timings."""
    saved = {}

    def pre_hook(nargs, reset_only=False):
        out = nargs['OUT']
        if not reset_only and out.untyped_storage().data_ptr() == nargs['QKV'].untyped_storage().data_ptr():
            saved['out'] = out.clone()

    def post_hook(nargs, exception):
        if 'out' in saved:
            nargs['OUT'].copy_(saved.pop('out'))

    return dict(pre_hook=pre_hook, post_hook=post_hook)


@triton.jit
def _rope_tile(COS, SIN, pid_n, h, N, P, HALF, stride_th, stride_tn, PAIRS: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_D: tl.constexpr):
    """Token rows, head-dim columns, rotation mask, which of its pair a column is (``lower``: the one whose
    output subtracts), its partner column, its table column and table values of a tile; pairs are (j, j +
    HALF) in the rotate-half layout, (2j, 2j + 1) with ``PAIRS`` (a reparameterized projection)."""
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    rot = (n >= P) & (n < N) & (d < 2 * HALF)
    if PAIRS:
        lower = d % 2 == 0
        partner = tl.where(lower, d + 1, d - 1)
        col = d // 2
    else:
        lower = d < HALF
        partner = tl.where(lower, d + HALF, d - HALF)
        col = tl.where(lower, d, d - HALF)
    t = h * stride_th + (n - P) * stride_tn + col
    c = tl.load(COS + t, mask=rot, other=1.0)
    s = tl.load(SIN + t, mask=rot, other=0.0)
    return n, d, lower, rot, partner, col, c, s


@triton.jit
def _program_tile(N, BLOCK_N: tl.constexpr):
    """This program's token block, head and batch entry: token blocks and batch share grid axis 0 (CUDA allows
    2^31 - 1 programs there, 65535 on the others: Swin's windows multiply the batch), heads are axis 1."""
    blocks = tl.cdiv(N, BLOCK_N)
    pid = tl.program_id(0)
    return pid % blocks, tl.program_id(1), (pid // blocks).to(tl.int64)


@_autotune('PAIRS', **_in_place_restoring_hooks())
@triton.jit
def _rope_fwd_kernel(
        QKV, OUT, COS, SIN, N, D, P, HALF,
        stride_xb, stride_xn, stride_x3, stride_xh, stride_xd,
        stride_y2, stride_yb, stride_yh, stride_yn, stride_yd,
        stride_th, stride_tn,
        PAIRS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """y1 = x1 cos - x2 sin, y2 = x2 cos + x1 sin for q and k of one (token block, head, batch); OUT may be
    QKV itself (each program reads its tile and its partners before writing them)."""
    pid_n, h, b = _program_tile(N, BLOCK_N)
    n, d, lower, rot, partner, _, c, s = _rope_tile(COS, SIN, pid_n, h, N, P, HALF, stride_th, stride_tn, PAIRS,
                                                    BLOCK_N, BLOCK_D)
    s = tl.where(lower, -s, s)
    mask = (n < N) & (d < D)
    for i in tl.static_range(2):
        x_ptr = QKV + b * stride_xb + i * stride_x3 + h * stride_xh + n * stride_xn
        x = tl.load(x_ptr + d * stride_xd, mask=mask).to(tl.float32)
        x_partner = tl.load(x_ptr + partner * stride_xd, mask=rot).to(tl.float32)
        y = tl.where(rot, x * c + x_partner * s, x)
        y_ptr = OUT + i * stride_y2 + b * stride_yb + h * stride_yh + n * stride_yn + d * stride_yd
        tl.store(y_ptr, y.to(OUT.dtype.element_ty), mask=mask)


@_autotune('TABLE_GRAD', 'HAS_DV', 'PAIRS')
@triton.jit
def _rope_bwd_kernel(
        DQ, DK, DV, QKV, DQKV, COS, SIN, DCOS, DSIN, N, D, P, HALF, R,
        stride_qb, stride_qh, stride_qn, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_xb, stride_xn, stride_x3, stride_xh, stride_xd,
        stride_db, stride_dn, stride_d3, stride_dh,
        stride_th, stride_tn,
        TABLE_GRAD: tl.constexpr, HAS_DV: tl.constexpr, PAIRS: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
):
    """dq, dk = inverse rotation of their gradients, dv copied (zeros without DV), all into one dqkv; with
    TABLE_GRAD, this tile's part of dcos, dsin.

    dcos = dy1 x1 + dy2 x2 and dsin = dy2 x1 - dy1 x2, summed over q and k here and over batch and heads
    by the caller from the (batch, heads, rows, half) partials, which keeps the result deterministic.
    """
    pid_n, h, b = _program_tile(N, BLOCK_N)
    n, d, lower, rot, partner, col, c, s = _rope_tile(COS, SIN, pid_n, h, N, P, HALF, stride_th, stride_tn, PAIRS,
                                                      BLOCK_N, BLOCK_D)
    s = tl.where(lower, s, -s)
    mask = (n < N) & (d < D)
    dx_ptr = DQKV + b * stride_db + h * stride_dh + n * stride_dn + d
    dcos = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dsin = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for i in tl.static_range(2):
        if i == 0:
            dy_ptr = DQ + b * stride_qb + h * stride_qh + n * stride_qn
            stride_gd = stride_qd
        else:
            dy_ptr = DK + b * stride_kb + h * stride_kh + n * stride_kn
            stride_gd = stride_kd
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
    if HAS_DV:
        dv = tl.load(DV + b * stride_vb + h * stride_vh + n * stride_vn + d * stride_vd, mask=mask)
    else:
        dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    tl.store(dx_ptr + 2 * stride_d3, dv.to(DQKV.dtype.element_ty), mask=mask)
    if TABLE_GRAD:
        t = (b * tl.num_programs(1) + h) * R * HALF + (n - P) * HALF + col
        tl.store(DCOS + t, dcos, mask=rot & lower)
        tl.store(DSIN + t, dsin, mask=rot & lower)


def _table_strides(cos: Tensor) -> Tuple[int, int]:
    """Head and row strides of the (contiguous) tables; head stride 0 when one table serves all heads."""
    return (cos.stride(0) if cos.shape[0] > 1 else 0), cos.stride(1)


def _grid(B: int, N: int, H: int):
    """(token blocks x batch, heads): see ``_program_tile``."""
    return lambda meta: (triton.cdiv(N, meta['BLOCK_N']) * B, H)


def _rope_forward(qkv: Tensor, cos: Tensor, sin: Tensor, num_prefix_tokens: int, out: Optional[Tensor],
                  pairs: bool = False) -> None:
    """q and k of qkv (B, N, 3, heads, head_dim) rotated into out (B, N, 2, heads, head_dim), any strides, or
    into qkv itself where out is None (``rope_autograd.RopeForward``); ``pairs``: q's and k's dims in
    ``rope_torch.pair_order``."""
    B, N, _, H, D = qkv.shape
    out = qkv[:, :, :2] if out is None else out
    cos, sin = cos.contiguous(), sin.contiguous()
    stride_yb, stride_yn, stride_y2, stride_yh, stride_yd = out.stride()
    with torch.cuda.device_of(qkv):
        _rope_fwd_kernel[_grid(B, N, H)](
            qkv, out, cos, sin, N, D, num_prefix_tokens, cos.shape[-1], *qkv.stride(),
            stride_y2, stride_yb, stride_yh, stride_yn, stride_yd, *_table_strides(cos),
            PAIRS=pairs, BLOCK_D=triton.next_power_of_2(D))


@torch.library.custom_op('timm_pe::rope_qkv', mutates_args=())
def _rope_qkv(qkv: Tensor, cos: Tensor, sin: Tensor, num_prefix_tokens: int, pairs: bool = False) -> Tensor:
    """Rotated q and k as one (2, B, heads, N, head_dim) buffer (ops may not return views of qkv); ``pairs``:
    q's and k's dims in ``rope_torch.pair_order``."""
    B, N, _, H, D = qkv.shape
    out = qkv.new_empty((2, B, H, N, D))
    _rope_forward(qkv, cos, sin, num_prefix_tokens, out.permute(1, 3, 0, 2, 4), pairs)
    return out


@_rope_qkv.register_fake
def _(qkv, cos, sin, num_prefix_tokens, pairs=False):
    B, N, _, H, D = qkv.shape
    return qkv.new_empty((2, B, H, N, D))


@torch.library.custom_op('timm_pe::rope_qkv_backward', mutates_args=())
def _rope_qkv_backward(
        grad_q: Tensor, grad_k: Tensor, grad_v: Optional[Tensor], qkv: Optional[Tensor], cos: Tensor, sin: Tensor,
        num_prefix_tokens: int, pairs: bool = False,
) -> List[Tensor]:
    """[dqkv], or [dqkv, dcos, dsin] when qkv is given (it is only needed for the table gradients).

    The v slot of dqkv gets ``grad_v``, or zeros where v's gradient reaches qkv apart (the compiled path).
    """
    B, H, N, D = grad_q.shape
    cos, sin = cos.contiguous(), sin.contiguous()
    R, half = cos.shape[1:]
    dqkv = grad_q.new_empty((B, N, 3, H, D))
    table_grad = qkv is not None
    partials = [cos.new_empty((B, H, R, half) if table_grad else 0) for _ in range(2)]
    dv = grad_q if grad_v is None else grad_v
    x = dqkv if qkv is None else qkv
    with torch.cuda.device_of(grad_q):
        _rope_bwd_kernel[_grid(B, N, H)](
            grad_q, grad_k, dv, x, dqkv, cos, sin, *partials, N, D, num_prefix_tokens, half, R,
            *grad_q.stride(), *grad_k.stride(), *dv.stride(), *x.stride(), *dqkv.stride()[:4], *_table_strides(cos),
            TABLE_GRAD=table_grad, HAS_DV=grad_v is not None, PAIRS=pairs, BLOCK_D=triton.next_power_of_2(D))
    if not table_grad:
        return [dqkv]
    heads = (0, 1) if cos.shape[0] == 1 else 0
    return [dqkv] + [p.sum(heads).view_as(cos) for p in partials]


@_rope_qkv_backward.register_fake
def _(grad_q, grad_k, grad_v, qkv, cos, sin, num_prefix_tokens, pairs=False):
    B, H, N, D = grad_q.shape
    dqkv = grad_q.new_empty((B, N, 3, H, D))
    return [dqkv] if qkv is None else [dqkv, torch.empty_like(cos), torch.empty_like(sin)]


def _setup_context(ctx, inputs, output):
    qkv, cos, sin, num_prefix_tokens, pairs = inputs
    ctx.num_prefix_tokens, ctx.pairs = num_prefix_tokens, pairs
    ctx.save_for_backward(qkv, cos, sin)  # no extra memory: attention keeps qkv alive through the v view


def _backward(ctx, grad):
    qkv, cos, sin = ctx.saved_tensors
    table_grad = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
    grads = torch.ops.timm_pe.rope_qkv_backward(grad[0], grad[1], None, qkv if table_grad else None, cos, sin,
                                                ctx.num_prefix_tokens, ctx.pairs)
    dcos, dsin = grads[1:] if table_grad else (None, None)
    return grads[0], dcos, dsin, None, None


_rope_qkv.register_autograd(_backward, setup_context=_setup_context)


def rope_qkv_triton(
        qkv: Tensor,
        cos: Tensor,
        sin: Tensor,
        num_prefix_tokens: int = 0,
        pairs: bool = False,
        overwrite_qkv: bool = False,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Triton counterpart of ``rope_qkv_torch`` (with ``pairs``, of ``rope_qkv_pairs``): q, k rotated in one
    launch, with ``overwrite_qkv`` in qkv's own storage; v a view of qkv, never copied.

    Traced (torch.compile, FX) it is the functional custom op; eager, the shared autograd node around the
    same kernels.
    """
    if torch.compiler.is_compiling() or fx_symbolic_tracing():
        qk = torch.ops.timm_pe.rope_qkv(qkv, cos, sin, num_prefix_tokens, pairs)
        return qk[0], qk[1], v_view(qkv)
    return rope_qkv_eager(qkv, cos, sin, num_prefix_tokens, functools.partial(_rope_forward, pairs=pairs),
                          functools.partial(torch.ops.timm_pe.rope_qkv_backward, pairs=pairs), overwrite_qkv)
