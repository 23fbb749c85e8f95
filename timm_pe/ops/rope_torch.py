"""Rotary embedding in plain PyTorch: the path for CPUs and wherever the Triton backend is not selected.

Layout conventions shared by every backend:
- ``qkv`` is the fused projection output viewed as (B, N, 3, heads, head_dim), any strides.
- ``cos`` / ``sin`` are float32 tables of shape (T, N - num_prefix_tokens, rot_dim // 2) with T = 1
  (one table for all heads, RoPE-Axial) or T = heads (RoPE-Mixed).
- Rotate-half pairing: dim j is rotated with dim j + rot_dim // 2, for j < rot_dim // 2; dims at and
  beyond rot_dim pass through (partial RoPE). Prefix tokens pass through.
  (Reparameterized layers, and ``rope_qkv_projected`` on the CPU, put each pair side by side instead, inside
  attention only: ``pair_order``, ``rope_qkv_pairs``.)
"""
import functools
from typing import List, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from ..layers.grid import derived_table
from .rope_autograd import records_grad, rope_qkv_eager, tables_invertible, unrotated_table_grads, v_view

# Elements of the rotated region per eager step and intra-op thread (1 MiB of float32): a chunk's scratch and
# table rows stay in cache, and a many-core machine still splits every op across all its threads.
_CHUNK = 1 << 18


def _build_wide_tables(cos: torch.Tensor, sin: torch.Tensor, heads: int) -> Tuple[torch.Tensor, torch.Tensor]:
    return tuple(torch.cat([t, t], -1).float().expand(heads, -1, -1).transpose(0, 1).contiguous() for t in (cos, sin))


def wide_tables(cos: torch.Tensor, sin: torch.Tensor, heads: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos and sin as (rows, heads, rot_dim) float32, each half of a head repeating the (T, rows, rot_dim/2) table.

    In this token-major layout a head's rotated dims, and a token's heads, are one contiguous run in the
    tables as in qkv, so every op of the rotation loops over whole tokens rather than over half-heads
    (32 elements at ViT-S, where the per-row cost of ATen's loop weighs). Cached while the tables last
    unchanged: a model's RoPE-Axial tables, and RoPE-Mixed's inference tables, are widened once, and a
    backward reuses its forward's.
    """
    return _kept_with_tables(cos, sin, ('rope_wide', heads), lambda: _build_wide_tables(cos, sin, heads))


def _kept_with_tables(cos: torch.Tensor, sin: torch.Tensor, settings, build):
    """``build()``, cached until the tables change; built for the call where they cannot be tracked (a JIT
    trace, inference tensors, which keep no version)."""
    if torch.jit.is_tracing() or cos.is_inference() or sin.is_inference():
        with torch.no_grad():
            return build()
    return derived_table((cos, sin), settings, build)


def _rotate_into(x: torch.Tensor, y: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool,
                 scratch: torch.Tensor) -> None:
    """Write x rotated by the full-width tables (by their inverse for gradients) into y, in float32, rounded once.

    Four ops over whole tokens: t = x sin, y = x cos, then y1 -/+= t2 and y2 +/-= t1 on the halves. Every
    product goes out= into y or a float32 buffer carved from ``scratch`` (no fresh temporaries, no pages
    faulted in per chunk); x is upcast into the buffer first because ATen multiplies mixed dtypes in a slow
    scalar casting loop. Each output is the difference of two rounded products, as in the reference (no
    FMA: float32 is bit-identical).
    """
    half, n = cos.shape[-1] // 2, x.numel()
    t = scratch[:n].view(x.shape)
    if x.dtype != torch.float32:
        x = scratch[n:2 * n].view(x.shape).copy_(x)
    out = y if y.dtype == torch.float32 else scratch[2 * n:3 * n].view(y.shape)
    torch.mul(x, sin, out=t)
    torch.mul(x, cos, out=out)
    out1, out2, t1, t2 = out[..., :half], out[..., half:], t[..., :half], t[..., half:]
    if inverse:
        out1.add_(t2)
        out2.sub_(t1)
    else:
        out1.sub_(t2)
        out2.add_(t1)
    if out is not y:
        y.copy_(out)


def _chunks(B: int, rows: int, elements_per_row: int):
    """(batch slice, row slice) chunks of about ``_CHUNK`` elements per intra-op thread: runs of rows (tokens)
    across the whole batch, so each run's table rows are read from memory once and reused for every batch
    entry; one batch entry at a time where a single row of the whole batch is over the budget."""
    budget = _CHUNK * torch.get_num_threads()
    if B * elements_per_row <= budget:
        step = budget // (B * elements_per_row)
        return [(slice(0, B), slice(r, r + step)) for r in range(0, rows, step)]
    step = max(1, budget // elements_per_row)
    return [(slice(b, b + 1), slice(r, r + step)) for b in range(B) for r in range(0, rows, step)]


def _rope_into(x: torch.Tensor, y: torch.Tensor, wide: Tuple[torch.Tensor, torch.Tensor], num_prefix_tokens: int,
               inverse: bool = False) -> None:
    """Rotate a token-major (B, N, slots, heads, head_dim) x into y (which may be x): pass-through regions
    copied, the rotation in cache-sized chunks sharing one float32 scratch buffer, the (rows, heads, rot)
    tables broadcast over slots."""
    p, rot = num_prefix_tokens, wide[0].shape[-1]
    B, N, S, H, D = x.shape
    if p and y is not x:
        y[:, :p].copy_(x[:, :p])
    if rot < D and y is not x:
        y[:, p:, ..., rot:].copy_(x[:, p:, ..., rot:])
    chunks = _chunks(B, N - p, S * H * rot)
    b0, r0 = chunks[0]
    buffers = 1 if x.dtype == y.dtype == torch.float32 else 3
    scratch = torch.empty(buffers * len(range(B)[b0]) * len(range(N - p)[r0]) * S * H * rot, device=x.device)
    xr, yr = x[:, p:, ..., :rot], y[:, p:, ..., :rot]
    cos, sin = (t.unsqueeze(1) for t in wide)
    for b, r in chunks:
        _rotate_into(xr[b, r], yr[b, r], cos[r], sin[r], inverse, scratch)


def _table_grads(xs, gs, cos: torch.Tensor, num_prefix_tokens: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """dcos = g1 x1 + g2 x2 and dsin = g2 x1 - g1 x2 over q and k, for token-major (B, N, heads, head_dim) x
    and g: each batch entry's products accumulated by ``addcmul_`` into two (rows, heads, rot) float32 sums,
    which stay in cache (no product is written out and read back), whose halves then give the tables'
    gradients."""
    p, half = num_prefix_tokens, cos.shape[-1]
    B, N, H, _ = xs[0].shape
    dc, ds = (cos.new_zeros((N - p, H, 2 * half)) for _ in range(2))
    for x, g in zip(xs, gs):
        for b in range(B):
            xb, gb = (t[b, p:, :, :2 * half].float() for t in (x, g))
            dc.addcmul_(gb, xb)
            ds[..., :half].addcmul_(gb[..., half:], xb[..., :half])
            ds[..., half:].addcmul_(gb[..., :half], xb[..., half:])
    dcos = dc[..., :half] + dc[..., half:]
    dsin = ds[..., :half] - ds[..., half:]
    return dcos.transpose(0, 1).sum_to_size(cos.shape), dsin.transpose(0, 1).sum_to_size(cos.shape)


def rope_forward_torch(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_prefix_tokens: int,
                       out: Optional[torch.Tensor]) -> None:
    """q and k of a (B, N, 3, heads, head_dim) qkv rotated into a token-major (B, N, 2, heads, head_dim) ``out``,
    or into qkv itself where out is None: reads and writes run along whole tokens (SDPA takes q and k in any
    strides)."""
    qk = qkv[:, :, :2]
    _rope_into(qk, qk if out is None else out, wide_tables(cos, sin, qkv.shape[3]), num_prefix_tokens)


def rope_backward_torch(grad_q: torch.Tensor, grad_k: torch.Tensor, grad_v: torch.Tensor,
                        qkv: Optional[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor,
                        num_prefix_tokens: int) -> List[torch.Tensor]:
    """dqkv written once, slot by slot (q, k inverse-rotated, v copied); with ``qkv``, the table gradients.

    The gradients are read token-major, the layout SDPA's CPU backward returns them in.
    """
    B, H, N, D = grad_q.shape
    dqkv = grad_q.new_empty((B, N, 3, H, D))
    wide = wide_tables(cos, sin, H)
    gs = (grad_q.transpose(1, 2), grad_k.transpose(1, 2))
    for i, g in enumerate(gs):
        _rope_into(g.unsqueeze(2), dqkv[:, :, i:i + 1], wide, num_prefix_tokens, inverse=True)
    dqkv[:, :, 2].copy_(grad_v.transpose(1, 2))
    if qkv is None:
        return [dqkv]
    return [dqkv, *_table_grads((qkv[:, :, 0], qkv[:, :, 1]), gs, cos, num_prefix_tokens)]


def _rotate_expression(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, p: int, pairs: bool) -> torch.Tensor:
    half = cos.shape[-1]
    if pairs:  # pair order: dims 2j and 2j + 1
        x1, x2 = x[..., p:, 0:2 * half:2], x[..., p:, 1:2 * half:2]
    else:  # rotate-half: dims j and j + half
        x1, x2 = x[..., p:, :half], x[..., p:, half:2 * half]
    y1, y2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin
    rotated = torch.stack([y1, y2], -1).flatten(-2) if pairs else torch.cat([y1, y2], -1)
    rotated = torch.cat([rotated, x[..., p:, 2 * half:]], -1)
    return torch.cat([x[..., :p, :], rotated.to(x.dtype)], -2)


def rope_qkv_expression(
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        num_prefix_tokens: int = 0,
        pairs: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rotation as one expression per tensor, real arithmetic only: for Inductor, TorchScript and export
    (eager, its temporaries make it the slowest form). ``pairs``: q and k dims in ``pair_order`` (a
    reparameterized projection) rather than rotate-half."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return (_rotate_expression(q, cos, sin, num_prefix_tokens, pairs),
            _rotate_expression(k, cos, sin, num_prefix_tokens, pairs), v)


def rope_qkv_torch(
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        num_prefix_tokens: int = 0,
        overwrite_qkv: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rotate q and k straight from the fused qkv; v is returned as a view.

    Eager, q and k are written token-major into one (B, N, 2, heads, head_dim) buffer in cache-sized chunks,
    with no concatenation, no table rebuild and no full-size temporaries; with ``overwrite_qkv``, into qkv's own
    q and k slots instead (no new buffer, in training too). Under torch.compile (which cannot trace strided out= writes) it is the plain expression:
    Inductor fuses the rotation into one loop, plus a copy behind the prefix. benchmarks/rope.py measures
    both against timm.
    """
    if torch.compiler.is_compiling():
        return rope_qkv_expression(qkv, cos, sin, num_prefix_tokens)
    return rope_qkv_eager(qkv, cos, sin, num_prefix_tokens, rope_forward_torch, rope_backward_torch, overwrite_qkv)


@functools.lru_cache(maxsize=None)
def pair_order(heads: int, head_dim: int, rot_dim: int) -> torch.Tensor:
    """Rows of a qkv projection with each head's rotated q and k dims in pairs (j, j + rot_dim // 2, ...), the
    unrotated dims after them and v as it was."""
    half = rot_dim // 2
    head = torch.cat([torch.stack([torch.arange(half), torch.arange(half, rot_dim)], 1).flatten(),
                      torch.arange(rot_dim, head_dim)])
    qk = (head + head_dim * torch.arange(2 * heads).unsqueeze(1)).flatten()
    return torch.cat([qk, torch.arange(2 * heads * head_dim, 3 * heads * head_dim)])


def complex_tables(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """cos + i sin of the (T, rows, half) tables as (rows, 1, T, half) complex64, to broadcast over (B, rows,
    q and k, heads, half); cached while the tables last unchanged, like ``wide_tables``."""
    return _kept_with_tables(cos, sin, 'rope_complex',
                             lambda: torch.complex(cos, sin).transpose(0, 1).unsqueeze(1).contiguous())


def rope_qkv_projected(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        cos: torch.Tensor,
        sin: torch.Tensor,
        heads: int,
        num_prefix_tokens: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The qkv projection of x (B, N, in) and the rotation of q and k at once, for the CPU: SDPA-ready
    (B, heads, N, head_dim) q, k, v, differentiable in every input.

    The projection runs from its weight and bias gathered into ``pair_order`` for this call (a transient copy:
    nothing is cached, so a change to the weights by any route is seen at once), so each rotated pair sits
    side by side and the rotation is one complex multiply in the projection's own output, where the rotate-half
    layout takes four ops. With autograd that is one node (``_ProjectedRope``), whose backward sends the
    gather's gradient back to the usual rows. q and k come out in that order: their dot
    products, the attention scores, are those of the rotate-half order, as both are permuted alike; v is as
    projected. ``apply_rope.projected_rope_applies`` says where it may serve.
    """
    rows = pair_order(heads, weight.shape[0] // (3 * heads), 2 * cos.shape[-1])
    if records_grad(x, weight, bias, cos, sin):
        return _ProjectedRope.apply(x, weight, bias, cos, sin, rows, heads, num_prefix_tokens)
    qkv = _gathered_projection(x, weight, bias, rows, heads)
    return rope_qkv_pairs(qkv, cos, sin, num_prefix_tokens, overwrite_qkv=True)


def _gathered_projection(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], rows: torch.Tensor,
                         heads: int) -> torch.Tensor:
    """x (B, N, in) projected by the rows ``rows`` of weight and bias, as (B, N, 3, heads, head_dim)."""
    qkv = F.linear(x, weight.index_select(0, rows), None if bias is None else bias.index_select(0, rows))
    return qkv.view(x.shape[0], x.shape[1], 3, heads, -1)


class _ProjectedRope(torch.autograd.Function):
    """``rope_qkv_projected`` for training: the rotation in the projection's own output, so attention keeps no
    second q and k buffer alive (the projection output stays alive through v in any case); no pair-ordered
    weight kept for the backward either, which gathers the weight again.

    RoPE-Mixed's table gradients, sum(grad * conj(x)) for x the unrotated pairs, are taken from the rotated
    y = x t that attention keeps anyway, as sum(grad * conj(y)) / conj(t); where a table entry's modulus is
    far from 1 (0, subnormal, huge: y / t would not give x back), the unrotated q and k are kept instead.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, cos, sin, rows, heads, num_prefix_tokens):
        p = num_prefix_tokens
        qkv = _gathered_projection(x, weight, bias, rows, heads)
        qk = qkv[:, :, :2]
        table_grad = ctx.needs_input_grad[3] or ctx.needs_input_grad[4]
        unrotated = table_grad and not tables_invertible(cos, sin)
        kept = qk.clone().permute(2, 0, 3, 1, 4).unbind(0) if unrotated else None  # (B, heads, N, head_dim) q, k
        rope_pairs_forward_torch(qkv, cos, sin, p, None)
        q, k, v = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2), v_view(qkv)
        ctx.save_for_backward(x, weight, rows, cos, sin, *((kept or (q, k)) if table_grad else ()))
        ctx.has_bias, ctx.num_prefix_tokens = bias is not None, p
        ctx.saved_rotated = table_grad and not unrotated
        return q, k, v

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_q, grad_k, grad_v):
        x, weight, rows, cos, sin, *xs = ctx.saved_tensors
        p = ctx.num_prefix_tokens
        dx = dweight = dbias = dcos = dsin = None
        if xs:  # the table gradients, from token-major views
            dcos, dsin = _pair_table_grads([g.transpose(1, 2) for g in (grad_q, grad_k)],
                                           [t.transpose(1, 2) for t in xs], cos.shape, p)
            if ctx.saved_rotated:
                dcos, dsin = unrotated_table_grads(dcos, dsin, cos, sin)
        if not any(ctx.needs_input_grad[:3]):  # the tables alone train
            return dx, dweight, dbias, dcos, dsin, None, None, None
        dqkv = rope_pairs_backward_torch(grad_q, grad_k, grad_v, None, cos, sin, p)[0]
        grad = dqkv.view(-1, dqkv[0, 0].numel())
        if ctx.needs_input_grad[0]:
            dx = (grad @ weight.index_select(0, rows)).view(x.shape)
        if ctx.needs_input_grad[1]:
            dweight = torch.empty_like(weight).index_copy_(0, rows, grad.t() @ x.reshape(-1, x.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            dbias = grad.new_empty(grad.shape[-1]).index_copy_(0, rows, grad.sum(0))
        return dx, dweight, dbias, dcos, dsin, None, None, None


def _viewable(t: torch.Tensor) -> bool:
    """Whether ``view_as_complex`` can view t's last dim as pairs: unit stride, every other stride and the
    offset even."""
    return t.stride(-1) == 1 and t.storage_offset() % 2 == 0 and all(s % 2 == 0 for s in t.stride()[:-1])


def _complex_pairs(t: torch.Tensor) -> torch.Tensor:
    """t's last dim, pair-ordered (re, im, re, im, ...), as complex64: a view of t where its dtype and strides
    allow, else of a float32 copy."""
    if t.dtype != torch.float32 or not _viewable(t):
        t = t.float().contiguous()
    return torch.view_as_complex(t.unflatten(-1, (-1, 2)))


def _rotate_pairs_into(y: torch.Tensor, x: torch.Tensor, table: torch.Tensor, num_prefix_tokens: int) -> None:
    """y = x rotated by the complex ``table`` for token-major (B, N, ..., head_dim) x and y in pair order (any
    float dtype; y is x, or does not overlap it): prefix tokens and unrotated dims copied, the rest one
    complex64 multiply rounded once into y."""
    p, rot = num_prefix_tokens, 2 * table.shape[-1]
    if p and y is not x:
        y[:, :p].copy_(x[:, :p])
    if rot < y.shape[-1] and y is not x:
        y[:, p:, ..., rot:].copy_(x[:, p:, ..., rot:])
    x, y = x[:, p:, ..., :rot], y[:, p:, ..., :rot]
    if y.dtype == torch.float32 and _viewable(y):
        torch.mul(_complex_pairs(x), table, out=_complex_pairs(y))
    else:
        y.copy_(torch.view_as_real(_complex_pairs(x) * table).flatten(-2))


def token_tables(cos: torch.Tensor, sin: torch.Tensor, heads: int, head_dim: int, num_prefix_tokens: int
                 ) -> torch.Tensor:
    """A (N, 3 * heads * head_dim // 2) complex64 table by which to multiply whole tokens of a pair-ordered qkv
    (the rotation where q and k are rotated; 1 for v, prefix tokens and unrotated dims), cached as
    ``complex_tables``."""
    def build():
        rows, half = cos.shape[1], cos.shape[2]
        table = torch.ones((num_prefix_tokens + rows, 3, heads, head_dim // 2), dtype=torch.complex64,
                           device=cos.device)
        table[num_prefix_tokens:, :2, :, :half] = complex_tables(cos, sin)
        return table.flatten(1)
    return _kept_with_tables(cos, sin, ('rope_token', heads, head_dim, num_prefix_tokens), build)


def _token_rows(qkv: torch.Tensor) -> Optional[torch.Tensor]:
    """A float32 (B, N, 3, heads, head_dim) qkv whose tokens are each one contiguous run as a (B, N,
    3 * heads * head_dim // 2) complex64 view, else None."""
    _, _, _, H, D = qkv.shape
    if qkv.dtype != torch.float32 or qkv.stride()[2:] != (H * D, D, 1) or not _viewable(qkv):
        return None
    return torch.view_as_complex(qkv.flatten(2).unflatten(-1, (-1, 2)))


def rope_pairs_forward_torch(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_prefix_tokens: int,
                             out: Optional[torch.Tensor]) -> None:
    """``rope_forward_torch`` for q and k in ``pair_order``: one complex multiply, prefix and unrotated dims
    copied where out is not qkv.

    In place on a float32 qkv whose tokens are contiguous (a fresh projection output), the multiply runs over
    whole tokens by ``token_tables``: one contiguous pass, which right after the projection takes half the
    time of the strided pass over q and k alone (ATen's loop over 32-element runs, v between them). v, the
    prefix tokens and the unrotated dims are multiplied by 1, which gives every finite value back bit for
    bit (an inf makes its pair's other value NaN: non-finite either way)."""
    rows = _token_rows(qkv) if out is None else None
    if rows is not None:
        _, _, _, H, D = qkv.shape
        torch.mul(rows, token_tables(cos, sin, H, D, num_prefix_tokens), out=rows)
        return
    qk = qkv[:, :, :2]
    _rotate_pairs_into(qk if out is None else out, qk, complex_tables(cos, sin), num_prefix_tokens)


def rope_pairs_backward_torch(grad_q: torch.Tensor, grad_k: torch.Tensor, grad_v: torch.Tensor,
                              qkv: Optional[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor,
                              num_prefix_tokens: int) -> List[torch.Tensor]:
    """``rope_pairs_forward_torch``'s backward, as ``rope_backward_torch``'s: dqkv written once (q and k
    multiplied by the conjugate tables, v copied); with ``qkv``, dcos + i dsin = sum of grad * conj(x)."""
    p = num_prefix_tokens
    B, H, N, D = grad_q.shape
    dqkv = grad_q.new_empty((B, N, 3, H, D))
    inverse = complex_tables(cos, sin).conj()[:, 0]  # (rows, T, half): one slot
    gs = (grad_q.transpose(1, 2), grad_k.transpose(1, 2))
    for i, g in enumerate(gs):
        _rotate_pairs_into(dqkv[:, :, i], g, inverse, p)
    dqkv[:, :, 2].copy_(grad_v.transpose(1, 2))
    if qkv is None:
        return [dqkv]
    return [dqkv, *_pair_table_grads(gs, (qkv[:, :, 0], qkv[:, :, 1]), cos.shape, p)]


def _pair_table_grads(gs, xs, shape: torch.Size, num_prefix_tokens: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """dcos + i dsin = the sum of g * conj(x) over q and k and the batch, for token-major (B, N, heads,
    head_dim) g and x in pair order: each batch entry accumulated by ``addcmul_`` into one cache-resident
    (rows, heads, rot / 2) sum, as ``_table_grads``."""
    p, B, N, H, _ = num_prefix_tokens, *gs[0].shape
    rot = 2 * shape[-1]
    sums = torch.zeros((N - p, H, rot // 2), dtype=torch.complex64, device=gs[0].device)
    for g, x in zip(gs, xs):
        for b in range(B):
            sums.addcmul_(_complex_pairs(g[b, p:, :, :rot]), _complex_pairs(x[b, p:, :, :rot]).conj())
    sums = sums.transpose(0, 1)
    return sums.real.sum_to_size(shape), sums.imag.sum_to_size(shape)


def rope_qkv_pairs(
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        num_prefix_tokens: int = 0,
        overwrite_qkv: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of a (B, N, 3, heads, head_dim) qkv whose q and k dims are in ``pair_order`` (a reparameterized
    or gathered projection), with q and k rotated; v is a view.

    Eager, the rotation is complex multiplies in float32, rounded once to qkv's dtype: with ``overwrite_qkv``
    (nothing else reads qkv) in qkv's own storage, else into a new buffer; with autograd in the node
    ``rope_qkv_torch`` uses, whose backward multiplies by the conjugate. Under ``torch.compile``
    and export, and for float64, it is an expression.
    """
    if qkv.dtype not in (torch.float32, torch.float16, torch.bfloat16) or torch.compiler.is_compiling():
        return rope_qkv_expression(qkv, cos, sin, num_prefix_tokens, pairs=True)
    return rope_qkv_eager(qkv, cos, sin, num_prefix_tokens, rope_pairs_forward_torch, rope_pairs_backward_torch,
                          overwrite_qkv)
