import pytest
import torch

from timm_pe.ops import apply_rope
from reference import rope_qkv_reference


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize('prefix', [0, 1, 5])
@pytest.mark.parametrize('heads_in_table', [False, True])
@pytest.mark.parametrize('head_dim,half', [(16, 8), (48, 6), (20, 4)])
def test_torch_path_matches_reference(dtype, prefix, heads_in_table, head_dim, half):
    torch.manual_seed(0)
    B, N, H = 2, 11 + prefix, 3
    # a slice of a wider linear output: the strides are not those of a contiguous qkv
    qkv = torch.randn(B, N, 3 * H * head_dim + 7, dtype=dtype)[..., :3 * H * head_dim].view(B, N, 3, H, head_dim)
    cos = torch.randn(H if heads_in_table else 1, N - prefix, half)
    sin = torch.randn_like(cos)
    out = apply_rope(qkv, cos, sin, prefix, backend='torch')
    ref = rope_qkv_reference(qkv, cos, sin, prefix)
    for a, b in zip(out, ref):
        assert a.dtype == dtype and a.shape == (B, H, N, head_dim)
        torch.testing.assert_close(a, b, atol=0, rtol=0) if dtype == torch.float32 else \
            torch.testing.assert_close(a.float(), b.float())


def test_torch_path_gradients_match_reference():
    torch.manual_seed(0)
    qkv = torch.randn(2, 9, 3, 2, 8, requires_grad=True)
    cos = torch.randn(2, 8, 4, requires_grad=True)
    sin = torch.randn(2, 8, 4, requires_grad=True)
    grads = []
    for fn in (lambda *a: apply_rope(*a, backend='torch'), rope_qkv_reference):
        q, k, v = fn(qkv, cos, sin, 1)
        (q.square().sum() + (k * 3).sum() + v.sum()).backward()
        grads.append([t.grad.clone() for t in (qkv, cos, sin)])
        for t in (qkv, cos, sin):
            t.grad = None
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_bad_tables_and_backend_are_rejected(monkeypatch):
    qkv = torch.randn(1, 5, 3, 2, 8)
    with pytest.raises(ValueError, match='RoPE tables must be'):
        apply_rope(qkv, torch.randn(1, 5, 4), torch.randn(1, 5, 4), num_prefix_tokens=1)
    with pytest.raises(ValueError, match='qkv must be'):
        apply_rope(qkv.flatten(2), torch.randn(1, 5, 4), torch.randn(1, 5, 4))
    monkeypatch.setenv('TIMM_PE_ROPE_BACKEND', 'cuda-magic')
    with pytest.raises(ValueError, match='Unknown RoPE backend'):
        apply_rope(qkv, torch.randn(1, 5, 4), torch.randn(1, 5, 4))


def test_triton_backend_on_a_cpu_model_says_what_it_needs(monkeypatch):
    """``TIMM_PE_ROPE_BACKEND=triton`` on a CPU model: a clear error, not Triton's '0 active drivers'."""
    import timm
    import timm_pe  # noqa: F401
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    monkeypatch.setenv('TIMM_PE_ROPE_BACKEND', 'triton')
    model = timm.create_model('vit_tiny_rope_axial', depth=1, embed_dim=48, num_heads=2, img_size=32)
    with pytest.raises(ValueError, match='runs on CUDA tensors, got a cpu tensor.*TRITON_INTERPRET=1'):
        model(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_overwrite_qkv_rotates_in_place_without_gradients(dtype):
    torch.manual_seed(0)
    B, N, H, D, prefix = 3, 13, 2, 16, 1
    qkv = torch.randn(B, N, 3 * H * D, dtype=dtype).view(B, N, 3, H, D)
    cos, sin = torch.randn(2, 1, N - prefix, 6).unbind(0)  # partial rotation: 12 of 16 dims
    ref = rope_qkv_reference(qkv, cos, sin, prefix)
    recorded = qkv.clone().requires_grad_()
    out = apply_rope(recorded, cos, sin, prefix, backend='torch', overwrite_qkv=True)
    assert torch.equal(recorded, qkv) and out[0].grad_fn is not None  # a leaf that trains: left alone
    with torch.no_grad():
        overwritten = qkv.clone()
        out = apply_rope(overwritten, cos, sin, prefix, backend='torch', overwrite_qkv=True)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=0, rtol=0) if dtype == torch.float32 else \
            torch.testing.assert_close(a.float(), b.float())
        assert a.untyped_storage().data_ptr() == overwritten.untyped_storage().data_ptr()
    assert torch.equal(overwritten[:, :, 2], qkv[:, :, 2])


def test_tables_changed_in_place_are_used_at_once():
    """The PyTorch path keeps widened copies of the tables it sees; an in-place change must not go unseen."""
    torch.manual_seed(0)
    qkv = torch.randn(2, 9, 3, 2, 8)
    cos, sin = torch.randn(2, 1, 9, 4).unbind(0)
    apply_rope(qkv, cos, sin, backend='torch')
    cos.mul_(-1)
    sin.add_(1)
    for a, b in zip(apply_rope(qkv, cos, sin, backend='torch'), rope_qkv_reference(qkv, cos, sin)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize('prefix', [0, 1, 5])
@pytest.mark.parametrize('heads_in_table', [False, True])
@pytest.mark.parametrize('head_dim,half', [(16, 8), (48, 6), (20, 4), (21, 4)])
@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('grad', [False, True])
def test_projected_rotation_gives_the_reference_scores(prefix, heads_in_table, head_dim, half, bias, grad):
    """The projection and rotation folded into one (q, k in pair order, rotated in the projection's output):
    the same q.k scores and v as projecting, then rotating by the reference; with autograd, the same
    gradients of x, the weight, the bias and the tables, also where the pairs do not view as complex (odd
    head dim)."""
    _check_projected_rotation(prefix, heads_in_table, head_dim, half, bias, grad)


@pytest.mark.parametrize('odd_entry', [0., 1e-40, 1e10])
@pytest.mark.parametrize('heads_in_table', [False, True])
@pytest.mark.parametrize('head_dim,half', [(16, 8), (21, 4)])
def test_projected_rotation_table_gradients_where_the_table_is_no_rotation(odd_entry, heads_in_table, head_dim,
                                                                           half):
    """Table entries of modulus 0, subnormal or huge, where the rotated q and k would not give the unrotated
    ones back for the table gradients: the fold keeps the unrotated ones and matches the reference."""
    _check_projected_rotation(1, heads_in_table, head_dim, half, True, True, odd_entry)


@pytest.mark.parametrize('heads_in_table', [False, True])
def test_projected_rotation_trains_the_tables_alone(heads_in_table):
    """A frozen projection and input with trainable tables (frequencies on a frozen backbone): the tables'
    gradients are the reference's."""
    _check_projected_rotation(1, heads_in_table, 16, 8, True, True, frozen=True)


def _check_projected_rotation(prefix, heads_in_table, head_dim, half, bias, grad, odd_entry=None, frozen=False):
    from timm_pe.ops.rope_torch import rope_qkv_projected
    torch.manual_seed(0)
    B, N, H, C = 2, 11 + prefix, 3, 24
    linear = torch.nn.Linear(C, 3 * H * head_dim, bias=bias).requires_grad_(not frozen)
    x = torch.randn(B, N, C, requires_grad=grad and not frozen)
    cos, sin = torch.randn(2, H if heads_in_table else 1, N - prefix, half)
    if odd_entry is not None:
        cos[..., 1, :2], sin[..., 1, :2] = odd_entry, 0.
    cos, sin = cos.requires_grad_(grad), sin.requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        q, k, v = rope_qkv_projected(x, linear.weight, linear.bias, cos, sin, H, prefix)
        rq, rk, rv = rope_qkv_reference(linear(x).view(B, N, 3, H, head_dim), cos, sin, prefix)
    assert q.shape == k.shape == v.shape == (B, H, N, head_dim)
    scores, ref_scores = q @ k.transpose(-1, -2), rq @ rk.transpose(-1, -2)
    huge = odd_entry is not None and odd_entry > 1  # scores of 1e20: float32 rounding is relative
    torch.testing.assert_close(scores, ref_scores, **({'atol': 1e-5, 'rtol': 1e-5} if huge else {}))
    torch.testing.assert_close(v, rv)
    if grad:  # the scores and v are what attention reads: their gradients reach every input alike
        weights = torch.randn_like(scores), torch.randn_like(v)
        inputs = [t for t in (x, linear.weight, linear.bias, cos, sin) if t is not None and t.requires_grad]
        got = torch.autograd.grad((scores * weights[0]).sum() + (v * weights[1]).sum(), inputs)
        want = torch.autograd.grad((ref_scores * weights[0]).sum() + (rv * weights[1]).sum(), inputs)
        for g, w in zip(got, want):
            # huge entries: sums of terms up to 1e10 that cancel, so the error is relative to the largest
            torch.testing.assert_close(g, w, atol=1e-5 * float(w.abs().max()) if huge else 1e-4, rtol=1e-4)
        q, k = q.detach(), k.detach()
    for got, want in ((q, rq), (k, rk)):  # pair order: dim j, then j + half, for the rotated dims
        torch.testing.assert_close(got[..., :2 * half], torch.stack([want[..., :half], want[..., half:2 * half]],
                                                                    -1).flatten(-2))
        torch.testing.assert_close(got[..., 2 * half:], want[..., 2 * half:])


@pytest.mark.parametrize('prefix', [0, 1, 5])
@pytest.mark.parametrize('heads_in_table', [False, True])
@pytest.mark.parametrize('head_dim,half', [(16, 8), (20, 4), (21, 4)])
@pytest.mark.parametrize('dtype,grad', [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False),
                                        (torch.bfloat16, True)])
def test_pair_ordered_rotation_is_the_reference_in_pair_order(prefix, heads_in_table, head_dim, half, dtype, grad):
    """A qkv with q, k rows in ``pair_order`` rotates by complex multiplies (in qkv's own storage without
    autograd, else in the autograd node; through float32 copies for bf16 and for odd head dims, whose pairs do
    not view as complex): the reference's q and k in pair order, and gradients (the tables' included) the
    reference's, q's and k's reordered alike."""
    from timm_pe.ops.rope_torch import pair_order, rope_qkv_pairs
    torch.manual_seed(0)
    B, N, H = 2, 11 + prefix, 3
    qkv = torch.randn(B, N, 3, H, head_dim).to(dtype).requires_grad_(grad)
    cos, sin = (t.requires_grad_(grad) for t in torch.randn(2, H if heads_in_table else 1, N - prefix, half))
    rows = pair_order(H, head_dim, 2 * half)
    head_rows = rows[:head_dim]  # q's first head: the order of dims within every head
    paired = qkv.detach().flatten(2)[..., rows].view(qkv.shape).requires_grad_(grad)
    target = paired if grad else paired.clone()
    got = rope_qkv_pairs(target, cos, sin, prefix, overwrite_qkv=True)
    if not grad:
        assert got[0].untyped_storage().data_ptr() == target.untyped_storage().data_ptr()
    want = rope_qkv_reference(qkv, cos, sin, prefix)
    tol = {} if dtype == torch.float32 else {'atol': 2e-2, 'rtol': 2e-2}
    for g, w in zip(got[:2], want[:2]):
        torch.testing.assert_close(g, w[..., head_rows], **tol)
    torch.testing.assert_close(got[2], want[2], atol=0, rtol=0)
    if grad:
        grads = [torch.randn_like(t) for t in got]
        got_grads = torch.autograd.grad(got, (paired, cos, sin), grads)
        usual = torch.argsort(head_rows)
        want_grads = torch.autograd.grad(want, (qkv, cos, sin), [grads[0][..., usual], grads[1][..., usual], grads[2]])
        torch.testing.assert_close(got_grads[0].flatten(2), want_grads[0].flatten(2)[..., rows], **tol)
        torch.testing.assert_close(got_grads[1], want_grads[1], **(tol or {'atol': 1e-5, 'rtol': 1e-5}))
        torch.testing.assert_close(got_grads[2], want_grads[2], **(tol or {'atol': 1e-5, 'rtol': 1e-5}))


@pytest.mark.parametrize('prefix', [0, 1, 5])
@pytest.mark.parametrize('heads_in_table', [False, True])
@pytest.mark.parametrize('head_dim,half', [(16, 8), (20, 4)])
def test_pair_rotation_over_whole_tokens_leaves_the_rest_bit_exact(prefix, heads_in_table, head_dim, half):
    """In place on a fresh float32 projection output the rotation multiplies whole tokens, v by 1: q and k
    rotated as the strided multiply over q and k alone rotates them (here, a slice of a wider output), and v,
    the prefix tokens and the unrotated dims bit for bit as they were; the table is built once."""
    from timm_pe.ops.rope_torch import rope_qkv_pairs, token_tables
    torch.manual_seed(0)
    B, N, H = 2, 11 + prefix, 3
    cos, sin = torch.randn(2, H if heads_in_table else 1, N - prefix, half)
    qkv = torch.randn(B, N, 3, H, head_dim)
    wider = torch.zeros(B, N, 3 * H * head_dim + 2)
    sliced = wider[..., :-2].view(qkv.shape).copy_(qkv)  # tokens 2 elements apart: no whole-token view
    fresh = qkv.clone()
    got = rope_qkv_pairs(fresh, cos, sin, prefix, overwrite_qkv=True)
    want = rope_qkv_pairs(sliced, cos, sin, prefix, overwrite_qkv=True)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    rotated = (slice(None), slice(prefix, None), slice(0, 2), slice(None), slice(0, 2 * half))
    untouched = torch.ones(qkv.shape, dtype=torch.bool)
    untouched[rotated] = False
    assert torch.equal(fresh[untouched], qkv[untouched])
    assert not torch.equal(fresh[rotated], qkv[rotated])
    assert token_tables(cos, sin, H, head_dim, prefix) is token_tables(cos, sin, H, head_dim, prefix)


def test_pair_ordered_rotation_takes_gradients_in_any_layout():
    """The autograd node views gradients as complex pairs where their strides allow, and copies them where
    not (a gradient with an odd stride); either way the result is the expression's."""
    from timm_pe.ops.rope_torch import rope_qkv_expression, rope_qkv_pairs
    torch.manual_seed(0)
    qkv = torch.randn(2, 9, 3, 2, 8, requires_grad=True)
    cos, sin = torch.randn(2, 1, 8, 4).unbind(0)
    odd = torch.randn(2, 2, 9, 9)[..., :8]  # rows 9 elements apart: no complex view
    for grad in (torch.randn(2, 2, 9, 8), odd, torch.randn(2, 9, 2, 8).transpose(1, 2)):
        got = torch.autograd.grad(rope_qkv_pairs(qkv, cos, sin, 1)[0], qkv, grad)[0]
        want = torch.autograd.grad(rope_qkv_expression(qkv, cos, sin, 1, pairs=True)[0], qkv, grad)[0]
        torch.testing.assert_close(got, want)


def test_projected_rotation_applies_to_float32_cpu_with_enough_tokens():
    from timm_pe.ops.apply_rope import projected_rope_applies

    class Quantized(torch.Tensor):
        pass

    linear = torch.nn.Linear(8, 24)
    x, cos, sin = torch.randn(1, 4, 8), torch.randn(1, 4, 2), torch.randn(1, 4, 2)
    args = (x, linear.weight, linear.bias, cos, sin)
    assert projected_rope_applies(*args)  # autograd records the weight's gather and the rotation
    with torch.no_grad():
        assert projected_rope_applies(*args)
        assert not projected_rope_applies(x[:, :3], linear.weight, linear.bias, cos[:, :3], sin[:, :3])  # 3 < 8 / 2
        assert not projected_rope_applies(x, linear.weight.as_subclass(Quantized), linear.bias, cos, sin)
        assert not projected_rope_applies(x.bfloat16(), linear.weight.bfloat16(), linear.bias.bfloat16(), cos, sin)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert not projected_rope_applies(*args)
        assert not projected_rope_applies(*(t.to('meta') for t in args))
    with torch.inference_mode():
        assert projected_rope_applies(*args)
