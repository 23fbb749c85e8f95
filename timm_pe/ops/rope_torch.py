"""Rotary embedding in plain PyTorch: the path CPU users run and the reference the kernel is tested against.

Layout conventions shared by every backend:
- ``qkv`` is the fused projection output viewed as (B, N, 3, heads, head_dim), any strides.
- ``cos`` / ``sin`` are float32 tables of shape (T, N - num_prefix_tokens, rot_dim // 2) with T = 1
  (one table for all heads, RoPE-Axial) or T = heads (RoPE-Mixed).
- Rotate-half pairing: dim j is rotated with dim j + rot_dim // 2, for j < rot_dim // 2; dims at and
  beyond rot_dim pass through (partial RoPE). Prefix tokens pass through.
"""
from typing import Tuple

import torch


def rope_qkv_reference(
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        num_prefix_tokens: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slow, obviously correct rotation (float32 math, clone and assign); used by tests only."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    half = cos.shape[-1]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        out = x.float().clone()
        x1 = out[:, :, num_prefix_tokens:, :half].clone()
        x2 = out[:, :, num_prefix_tokens:, half:2 * half].clone()
        out[:, :, num_prefix_tokens:, :half] = x1 * cos - x2 * sin
        out[:, :, num_prefix_tokens:, half:2 * half] = x2 * cos + x1 * sin
        return out.to(x.dtype)

    return rotate(q), rotate(k), v


def rope_qkv_torch(
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        num_prefix_tokens: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rotate q and k straight from the fused qkv into one (2, B, heads, N, head_dim) buffer.

    Each output region is written once, with no concatenation and no table rebuild: the split, the
    permute and the rotation cost one read and one write of q and k. v is returned as a view.
    """
    B, N, _, H, D = qkv.shape
    half = cos.shape[-1]
    rot = 2 * half
    p = num_prefix_tokens
    qk = qkv[:, :, :2].permute(2, 0, 3, 1, 4)
    out = qk.new_empty((2, B, H, N, D))
    if p:
        out[..., :p, :] = qk[..., :p, :]
    if rot < D:
        out[..., p:, rot:] = qk[..., p:, rot:]
    x1 = qk[..., p:, :half]
    x2 = qk[..., p:, half:rot]
    out[..., p:, :half] = x1 * cos - x2 * sin
    out[..., p:, half:rot] = x2 * cos + x1 * sin
    q, k = out.unbind(0)
    return q, k, qkv[:, :, 2].transpose(1, 2)
