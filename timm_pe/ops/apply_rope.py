"""The one public entry point for rotary embeddings: ``apply_rope``; and when the attention module may fold the
rotation into its projection instead (``rope_qkv_projected``)."""
import os
from typing import Optional, Tuple

import torch

from .rope_torch import rope_qkv_expression, rope_qkv_pairs, rope_qkv_torch

BACKENDS = ('auto', 'torch', 'triton')
BACKEND_ENV = 'TIMM_PE_ROPE_BACKEND'


def _resolve_backend(backend: Optional[str], device: torch.device) -> str:
    backend = backend or os.environ.get(BACKEND_ENV, 'auto')
    if backend not in BACKENDS:
        raise ValueError(f'Unknown RoPE backend {backend!r} (from argument or ${BACKEND_ENV}); allowed: {BACKENDS}')
    if backend == 'auto':
        return 'triton' if device.type == 'cuda' and triton_available() else 'torch'
    if backend == 'triton':
        if not triton_available():
            raise ValueError(f"RoPE backend 'triton' (from argument or ${BACKEND_ENV}) needs the triton package; "
                             f"install it or use backend 'torch' or 'auto'")
        if device.type != 'cuda' and os.environ.get('TRITON_INTERPRET') != '1':
            raise ValueError(f"RoPE backend 'triton' (from argument or ${BACKEND_ENV}) runs on CUDA tensors, got a "
                             f"{device.type} tensor: use backend 'torch' or 'auto', or set TRITON_INTERPRET=1 before "
                             f"triton is imported to run the kernel on CPU (slow; for tests)")
    return backend


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def apply_rope(
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        num_prefix_tokens: int = 0,
        backend: Optional[str] = None,
        overwrite_qkv: bool = False,
        pair_order: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a fused qkv projection into SDPA-ready q, k, v with q and k rotated.

    Args:
        qkv: (B, N, 3, heads, head_dim) activations straight from the qkv linear.
        cos, sin: float32 tables (1 or heads, N - num_prefix_tokens, rot_dim // 2); rot_dim <= head_dim.
        num_prefix_tokens: leading tokens (class, registers) that are never rotated.
        backend: 'auto' (Triton on CUDA, PyTorch elsewhere), 'torch' or 'triton'; defaults to
            ``$TIMM_PE_ROPE_BACKEND`` or 'auto'.
        overwrite_qkv: the caller's promise that nothing else reads qkv's q and k (a fresh projection
            output, which no op saved for its backward): eager, q and k are then rotated in qkv's storage,
            in training too, and returned as views of it.
        pair_order: q's and k's dims are in ``rope_torch.pair_order`` (a reparameterized projection): each
            rotated pair side by side (dims 2j, 2j + 1) rather than rotate-half (j, j + rot_dim // 2). q and
            k come out in that order; their dot products are the rotate-half ones.

    Returns:
        q, k, v of shape (B, heads, N, head_dim); v is a view of ``qkv``.

    Under TorchScript it is the plain PyTorch expression (the eager kernels are autograd Functions and the
    Triton op needs Python dispatch).
    """
    if torch.jit.is_scripting():
        return rope_qkv_expression(qkv, cos, sin, num_prefix_tokens, pair_order)
    return _apply_rope(qkv, cos, sin, num_prefix_tokens, backend, overwrite_qkv, pair_order)


def _apply_rope(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_prefix_tokens: int,
                backend: Optional[str], overwrite_qkv: bool, pair_order: bool
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f'qkv must be (B, N, 3, heads, head_dim), got shape {tuple(qkv.shape)}')
    B, N, _, H, D = qkv.shape
    expected_rows = N - num_prefix_tokens
    if cos.shape != sin.shape or cos.dim() != 3 or cos.shape[0] not in (1, H) or cos.shape[1] != expected_rows \
            or 2 * cos.shape[2] > D:
        raise ValueError(
            f'RoPE tables must be (1 or {H}, {expected_rows}, <= {D // 2}) for qkv {tuple(qkv.shape)} with '
            f'{num_prefix_tokens} prefix tokens, got cos {tuple(cos.shape)} and sin {tuple(sin.shape)}')
    if _resolve_backend(backend, qkv.device) == 'triton':
        from .rope_triton import rope_qkv_triton
        return rope_qkv_triton(qkv, cos, sin, num_prefix_tokens, pair_order, overwrite_qkv)
    if pair_order:
        return rope_qkv_pairs(qkv, cos, sin, num_prefix_tokens, overwrite_qkv)
    return rope_qkv_torch(qkv, cos, sin, num_prefix_tokens, overwrite_qkv)


def projected_rope_applies(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], cos: torch.Tensor,
                           sin: torch.Tensor) -> bool:
    """Whether ``rope_qkv_projected`` may stand for the projection of x by (weight, bias) and ``apply_rope``
    (the caller rules out hooks, tracers and TorchScript): plain float32 CPU tensors on the PyTorch backend,
    no autocast, and at least in_features / 2 tokens. With fewer, the per-call copy of the weight costs more
    than the rotation it saves (ViT-B at batch 1 loses, ViT-S at batch 1 gains)."""
    tensors = (x, weight, cos, sin) if bias is None else (x, weight, bias, cos, sin)
    return (all(t.device.type == 'cpu' and t.dtype == torch.float32 for t in tensors)
            and all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors)  # no quantized subclasses
            and 2 * x.shape[0] * x.shape[1] >= weight.shape[1]
            and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and not torch.is_autocast_enabled('cpu')
            and _resolve_backend(None, x.device) == 'torch')
