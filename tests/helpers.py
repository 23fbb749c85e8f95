"""Shared by model-level tests that compare two paths of one model."""
import contextlib

import torch
from timm.layers import LayerScale

from timm_pe.layers import PositionalAttention


def unit_scale_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Draw the attention and head weights at unit scale and open LayerScale fully, in place. At timm's init
    the scores are near zero, the attention near uniform, LayerScale damps its output and the logits are
    small: a wrong rotation, or a wrong gradient of RoPE-Mixed's frequencies, would go unseen."""
    with torch.no_grad():
        for attn in (m for m in model.modules() if isinstance(m, PositionalAttention)):
            for linear in (attn.qkv, attn.proj):
                linear.weight.normal_(std=linear.in_features ** -0.5)
        for layer_scale in (m for m in model.modules() if isinstance(m, LayerScale)):
            layer_scale.gamma.fill_(1.)
        if hasattr(model, 'get_classifier'):  # features_only models have no head
            model.get_classifier().weight.normal_(std=model.num_features ** -0.5)
    return model


@contextlib.contextmanager
def projection_called(model: torch.nn.Module):
    """Within: every attention layer's qkv projection is called as a module (a no-op pre-hook on each, which
    is what rules the fold out), so rotary layers rotate its rotate-half output by ``apply_rope`` instead of
    folding the rotation into a pair-ordered projection: the independent path to compare a fold against."""
    handles = [m.qkv.register_forward_pre_hook(lambda *args: None)
               for m in model.modules() if isinstance(m, PositionalAttention)]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
