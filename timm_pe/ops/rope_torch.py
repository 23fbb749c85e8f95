"""Rotary embedding in plain PyTorch: the path for CPUs and wherever the Triton backend is not selected.

Layout conventions shared by every backend:
- ``qkv`` is the fused projection output viewed as (B, N, 3, heads, head_dim), any strides.
- ``cos`` / ``sin`` are float32 tables of shape (T, N - num_prefix_tokens, rot_dim // 2) with T = 1
  (one table for all heads, RoPE-Axial) or T = heads (RoPE-Mixed).
- Rotate-half pairing: dim j is rotated with dim j + rot_dim // 2, for j < rot_dim // 2; dims at and
  beyond rot_dim pass through (partial RoPE). Prefix tokens pass through.
"""
from typing import Tuple

import torch
from torch.autograd.function import once_differentiable

# Elements of the rotated region per eager step and intra-op thread: each thread's float32 temporaries
# stay in its cache, and a many-core machine still splits every op across all its threads.
_CHUNK = 1 << 17


def _rotate_into(x: torch.Tensor, y: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool) -> None:
    """Write x rotated by the tables (by their inverse for gradients) into y, in float32, rounded once.

    x is upcast first because ATen multiplies mixed dtypes in a slow scalar casting loop. The two products
    of each output are rounded before the add, as in the reference (no FMA: float32 is bit-identical).
    """
    half = cos.shape[-1]
    x, y = x.float().unflatten(-1, (2, half)), y.unflatten(-1, (2, half))
    xc, xs = x * cos.unsqueeze(-2), x * sin.unsqueeze(-2)
    (torch.add if inverse else torch.sub)(xc[..., 0, :], xs[..., 1, :], out=y[..., 0, :])
    (torch.sub if inverse else torch.add)(xc[..., 1, :], xs[..., 0, :], out=y[..., 1, :])


def _rope_into(x: torch.Tensor, y: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_prefix_tokens: int,
               inverse: bool = False) -> None:
    """Rotate (2, B, heads, N, head_dim) x into y: pass-through regions copied, rotation in batch chunks."""
    p, rot = num_prefix_tokens, 2 * cos.shape[-1]
    _, B, H, N, D = x.shape
    if p:
        y[..., :p, :].copy_(x[..., :p, :])
    if rot < D:
        y[..., p:, rot:].copy_(x[..., p:, rot:])
    step = max(1, _CHUNK * torch.get_num_threads() // max(1, H * (N - p) * rot))
    for i in range(2):
        for b in range(0, B, step):
            _rotate_into(x[i, b:b + step, :, p:, :rot], y[i, b:b + step, :, p:, :rot], cos, sin, inverse)


class _RopeQKV(torch.autograd.Function):
    """Eager rotation with a hand-written backward.

    Autograd through slice assignments would clone the whole gradient once per assigned region, and
    the out= writes that keep the forward in cache are not differentiable anyway.
    """

    @staticmethod
    def forward(ctx, qkv, cos, sin, num_prefix_tokens):
        B, N, _, H, D = qkv.shape
        out = qkv.new_empty((2, B, H, N, D))
        _rope_into(qkv[:, :, :2].permute(2, 0, 3, 1, 4), out, cos, sin, num_prefix_tokens)
        ctx.save_for_backward(qkv, cos, sin)
        ctx.num_prefix_tokens = num_prefix_tokens
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        qkv, cos, sin = ctx.saved_tensors
        p, half = ctx.num_prefix_tokens, cos.shape[-1]
        dqkv = grad.new_empty(qkv.shape)
        dqkv[:, :, 2].zero_()
        _rope_into(grad, dqkv[:, :, :2].permute(2, 0, 3, 1, 4), cos, sin, p, inverse=True)
        if not (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            return dqkv, None, None, None
        x = qkv[:, :, :2].permute(2, 0, 3, 1, 4)[..., p:, :2 * half].float().unflatten(-1, (2, half))
        g = grad[..., p:, :2 * half].float().unflatten(-1, (2, half))
        dcos = (g * x).sum(-2).sum_to_size(cos.shape)
        dsin = (g[..., 1, :] * x[..., 0, :] - g[..., 0, :] * x[..., 1, :]).sum_to_size(sin.shape)
        return dqkv, dcos, dsin, None


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
    q, k = _RopeQKV.apply(qkv, cos, sin, num_prefix_tokens).unbind(0)
    return q, k, qkv[:, :, 2].transpose(1, 2)
