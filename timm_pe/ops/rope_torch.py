"""Rotary embedding in plain PyTorch: the path for CPUs and wherever the Triton backend is not selected.

Layout conventions shared by every backend:
- ``qkv`` is the fused projection output viewed as (B, N, 3, heads, head_dim), any strides.
- ``cos`` / ``sin`` are float32 tables of shape (T, N - num_prefix_tokens, rot_dim // 2) with T = 1
  (one table for all heads, RoPE-Axial) or T = heads (RoPE-Mixed).
- Rotate-half pairing: dim j is rotated with dim j + rot_dim // 2, for j < rot_dim // 2; dims at and
  beyond rot_dim pass through (partial RoPE). Prefix tokens pass through.
"""
from typing import List, Optional, Tuple

import torch

from .rope_autograd import rope_qkv_eager

# Elements of the rotated region per eager step and intra-op thread: each thread's float32 temporaries
# stay in its cache, and a many-core machine still splits every op across all its threads.
_CHUNK = 1 << 17


def _rotate_into(x: torch.Tensor, y: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool,
                 scratch: torch.Tensor) -> None:
    """Write x rotated by the tables (by their inverse for gradients) into y, in float32, rounded once.

    Every product goes out= into a contiguous float32 buffer carved from ``scratch`` (no op iterates over
    a fresh temporary, and no fresh pages are faulted in per chunk: each cost several times the
    arithmetic on one thread). x is upcast into the buffer first because ATen multiplies mixed dtypes
    in a slow scalar casting loop. The two products of each output are rounded before the add, as in
    the reference (no FMA: float32 is bit-identical).
    """
    half, n = cos.shape[-1], x.numel()
    x1_sin, x2_sin = (scratch[i * n // 2:(i + 1) * n // 2].view(*x.shape[:-1], half) for i in range(2))
    if x.dtype != torch.float32:
        x = scratch[n:2 * n].view(x.shape).copy_(x)
    out = y if y.dtype == torch.float32 else scratch[2 * n:3 * n].view(y.shape)
    x1, x2, out1, out2 = x[..., :half], x[..., half:], out[..., :half], out[..., half:]
    torch.mul(x1, sin, out=x1_sin)  # both sine products first, so that y may be x itself (in place)
    torch.mul(x2, sin, out=x2_sin)
    torch.mul(x1, cos, out=out1)
    out1.add_(x2_sin) if inverse else out1.sub_(x2_sin)
    torch.mul(x2, cos, out=out2)
    out2.sub_(x1_sin) if inverse else out2.add_(x1_sin)
    if out is not y:
        y.copy_(out)


def _batch_step(x: torch.Tensor, num_prefix_tokens: int, rot: int) -> int:
    """Batch entries of a (B, heads, N, head_dim) x per chunk: ``_CHUNK`` rotated elements per thread."""
    _, H, N, _ = x.shape
    return max(1, _CHUNK * torch.get_num_threads() // max(1, H * (N - num_prefix_tokens) * rot))


def _rope_into(xs, ys, cos: torch.Tensor, sin: torch.Tensor, num_prefix_tokens: int, inverse: bool = False) -> None:
    """Rotate each (B, heads, N, head_dim) x of ``xs`` into the y of ``ys``: pass-through regions copied,
    the rotation in batch chunks sharing one float32 scratch buffer."""
    p, rot = num_prefix_tokens, 2 * cos.shape[-1]
    B, H, N, D = xs[0].shape
    step = _batch_step(xs[0], p, rot)
    scratch = torch.empty(3 * min(step, B) * H * (N - p) * rot, device=xs[0].device)
    for x, y in zip(xs, ys):
        if p and y is not x:
            y[..., :p, :].copy_(x[..., :p, :])
        if rot < D and y is not x:
            y[..., p:, rot:].copy_(x[..., p:, rot:])
        for b in range(0, B, step):
            _rotate_into(x[b:b + step, :, p:, :rot], y[b:b + step, :, p:, :rot], cos, sin, inverse, scratch)


def _table_grads(xs, gs, cos: torch.Tensor, num_prefix_tokens: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """dcos = g1 x1 + g2 x2 and dsin = g2 x1 - g1 x2 over q and k, accumulated per batch entry into
    (heads, rows, half) float32 sums (no qkv-sized temporary), then summed onto the tables' shape."""
    p, half = num_prefix_tokens, cos.shape[-1]
    B, H, N, _ = xs[0].shape
    dcos, dsin = (cos.new_zeros((H, N - p, half)) for _ in range(2))
    for x, g in zip(xs, gs):
        for b in range(B):
            x1, x2 = x[b, :, p:, :2 * half].float().split(half, -1)
            g1, g2 = g[b, :, p:, :2 * half].float().split(half, -1)
            dcos.addcmul_(g1, x1).addcmul_(g2, x2)
            dsin.addcmul_(g2, x1).addcmul_(g1, x2, value=-1)
    return dcos.sum_to_size(cos.shape), dsin.sum_to_size(cos.shape)


def rope_forward_torch(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Rotated q and k of a (B, N, 3, heads, head_dim) qkv as one (2, B, heads, N, head_dim) tensor."""
    B, N, _, H, D = qkv.shape
    out = qkv.new_empty((2, B, H, N, D))
    _rope_into((qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)), out, cos, sin, num_prefix_tokens)
    return out


def rope_backward_torch(grad_q: torch.Tensor, grad_k: torch.Tensor, grad_v: torch.Tensor,
                        qkv: Optional[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor,
                        num_prefix_tokens: int) -> List[torch.Tensor]:
    """dqkv written once, slot by slot (q, k inverse-rotated, v copied); with ``qkv``, the table gradients."""
    B, H, N, D = grad_q.shape
    dqkv = grad_q.new_empty((B, N, 3, H, D))
    slots = [dqkv[:, :, i].transpose(1, 2) for i in range(3)]
    _rope_into((grad_q, grad_k), slots[:2], cos, sin, num_prefix_tokens, inverse=True)
    slots[2].copy_(grad_v)
    if qkv is None:
        return [dqkv]
    xs = (qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2))
    return [dqkv, *_table_grads(xs, (grad_q, grad_k), cos, num_prefix_tokens)]


def _rotate_expression(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, p: int) -> torch.Tensor:
    half = cos.shape[-1]
    x1, x2 = x[..., p:, :half], x[..., p:, half:2 * half]
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x[..., p:, 2 * half:]], -1)
    return torch.cat([x[..., :p, :], rotated.to(x.dtype)], -2)


def rope_qkv_expression(
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        num_prefix_tokens: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rotation as one expression per tensor, real arithmetic only: for Inductor, TorchScript and export
    (eager, its temporaries make it the slowest form)."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return (_rotate_expression(q, cos, sin, num_prefix_tokens), _rotate_expression(k, cos, sin, num_prefix_tokens),
            v)


def rope_qkv_torch(
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        num_prefix_tokens: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rotate q and k straight from the fused qkv; v is returned as a view.

    Eager, q and k are written into one (2, B, heads, N, head_dim) buffer in cache-sized chunks, with no
    concatenation, no table rebuild and no full-size temporaries. Under torch.compile (which cannot trace
    strided out= writes) it is the plain expression: Inductor fuses the rotation into one loop, plus a
    copy behind the prefix. benchmarks/rope.py measures both against timm.
    """
    if torch.compiler.is_compiling():
        return rope_qkv_expression(qkv, cos, sin, num_prefix_tokens)
    return rope_qkv_eager(qkv, cos, sin, num_prefix_tokens, rope_forward_torch, rope_backward_torch)
