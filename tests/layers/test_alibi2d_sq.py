import torch
from torch.nn import functional as F
from torch.nn.attention import SDPBackend

from timm_pe.layers import PositionalAttention, alibi_slopes
from timm_pe.layers.alibi2d_sq import Alibi2dSquared, padded_dim


def squared_alibi_bias(grid, heads, prefix):
    """Dense (heads, N, N) float64 bias -m_h |r_i - r_j|^2 with prefix rows and columns at 0."""
    h, w = grid
    n = h * w
    bias = torch.zeros(heads, prefix + n, prefix + n, dtype=torch.float64)
    m = alibi_slopes(heads).double()
    for i in range(n):
        for j in range(n):
            d2 = (i % w - j % w) ** 2 + (i // w - j // w) ** 2
            bias[:, prefix + i, prefix + j] = -m * d2
    return bias


def dense_attention(attn, x, grid, prefix):
    """The same layer written out: softmax(q k^T / sqrt(d) + bias) v."""
    B, N, C = x.shape
    q, k, v = attn.qkv(x).view(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    logits = q @ k.transpose(-1, -2) * attn.head_dim ** -0.5 + squared_alibi_bias(grid, attn.num_heads, prefix)
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C)
    return attn.proj(out)


def test_equals_the_dense_bias_form_in_float64():
    torch.manual_seed(0)
    for grid, prefix in [((3, 4), 1), ((5, 5), 0), ((2, 7), 3)]:
        heads, head_dim = 6, 16
        attn = PositionalAttention(heads * head_dim, heads, pos_enc=Alibi2dSquared(head_dim, heads),
                                   num_prefix_tokens=prefix).double().eval()
        x = torch.randn(2, prefix + grid[0] * grid[1], heads * head_dim, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(attn(x, grid), dense_attention(attn, x, grid, prefix), rtol=1e-12, atol=1e-12)


def test_the_bias_really_matters():
    """Negative control: without the extension the output differs."""
    torch.manual_seed(0)
    attn = PositionalAttention(64, 4, pos_enc=Alibi2dSquared(16, 4), num_prefix_tokens=1).double().eval()
    x = torch.randn(1, 13, 64, dtype=torch.float64)
    with torch.no_grad():
        with_bias = attn(x, (3, 4))
        attn.set_position_encoding(None, 1)
        assert (with_bias - attn(x, (3, 4))).abs().max() > 1e-2


def test_sdpa_gets_no_mask_and_the_fused_cpu_kernel(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        calls.append((attn_mask, SDPBackend(torch._fused_sdp_choice(q, k, v, attn_mask))))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, 'scaled_dot_product_attention', spy)
    import timm
    model = timm.create_model('vit_small_alibi2d_sq', depth=2, embed_dim=96, img_size=64).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert [mask for mask, _ in calls] == [None, None]
    assert {backend for _, backend in calls} == {SDPBackend.FLASH_ATTENTION}
    calls.clear()
    masked = timm.create_model('vit_small_alibi2d', depth=1, embed_dim=96, img_size=64).eval()
    with torch.no_grad():
        masked(torch.randn(1, 3, 64, 64))
    assert calls[0][0] is not None and calls[0][1] == SDPBackend.MATH  # what the mask costs on CPU


def test_padding_keeps_head_dims_aligned():
    assert padded_dim(64) == 72 and padded_dim(16) == 24 and padded_dim(58) == 64
    q = k = v = torch.randn(2, 6, 17, 64)
    q2, k2, v2 = Alibi2dSquared(64, 6).extend_qkv(q, k, v, (4, 4), 1)
    assert q2.shape == k2.shape == v2.shape == (2, 6, 17, 72)
    assert torch.equal(v2[..., :64], v) and torch.all(v2[..., 64:] == 0)


def test_extra_features_are_exact_in_half_precision_up_to_1024_px():
    from timm_pe.layers.alibi2d_sq import alibi_sq_features
    q, k = alibi_sq_features((64, 64), torch.device('cpu'), 6, 1, 8)
    for dtype in (torch.bfloat16, torch.float16):
        assert torch.equal(q.to(dtype).float(), q) and torch.equal(k.to(dtype).float(), k)
    assert k[0, 1:, 2].abs().max() > 1500  # |r|^2 itself would not be (bfloat16 steps by 8 there)
