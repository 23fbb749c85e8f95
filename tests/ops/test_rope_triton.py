"""The Triton RoPE kernel against ``rope_qkv_reference``, run by Triton's interpreter on CPU (or on CUDA).

The PyTorch path it is benchmarked against goes through the same value, gradient and compile checks.

Why this file may rerun itself in a child process: Triton picks interpreter or compiler when
``@triton.jit`` decorates a kernel, i.e. when ``timm_pe.ops.rope_triton`` is first imported, from
``TRITON_INTERPRET`` at that moment (importing triton itself, which ``import timm`` does, is harmless).
In a shared pytest process another module may import the kernels first, compiled, and compiled
kernels cannot take CPU tensors; setting the variable here at collection would instead switch every
module collected after this one to the interpreter. So unless this process already has interpreted
kernels (``TRITON_INTERPRET=1 python -m pytest tests/ops/test_rope_triton.py``) or a GPU, the tests
marked ``triton_kernel`` are deselected (``conftest.py``) and ``test_kernels_in_child_interpreter``
reruns this file in a fresh ``python -m pytest`` with ``TRITON_INTERPRET=1``, failing with the
child's report if any test there fails or skips.

Tolerances: float32 to 1e-6 (bit-exact in the interpreter; FMA contraction on GPU), float16 and
bfloat16 to one ulp of the reference (the interpreter truncates to bfloat16 where torch rounds), table
gradients to torch's float32 defaults (float32 sums over batch, heads, q and k in another order).
"""
import os
import subprocess
import sys

import pytest
import torch

import timm_pe
from timm_pe.ops import apply_rope
from timm_pe.ops import rope_torch
from reference import rope_qkv_reference


DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
kernel_test = pytest.mark.triton_kernel

# (B, N, heads, head_dim, rot_dim // 2, table heads T, prefix tokens, qkv layout, tables learn)
CASES = {
    'vit_cls': (2, 17, 3, 64, 32, 1, 1, 'contiguous', True),
    'mixed_48_slice': (2, 10, 2, 48, 24, 2, 0, 'slice', True),
    'partial_72_registers': (1, 21, 2, 72, 18, 1, 5, 'batch_major', False),
    'partial_80_strided_dim': (2, 13, 2, 80, 20, 2, 1, 'strided_dim', True),
    'full_96_mixed': (1, 37, 2, 96, 48, 2, 1, 'contiguous', False),
    'odd_rot_half': (2, 9, 3, 20, 5, 3, 5, 'slice', True),
}


def make_qkv(B, N, H, D, layout, dtype, fresh=False):
    """A (B, N, 3, H, D) view with the strides of the given layout, requiring grad through its base; ``fresh``:
    of a copy of the base made by autograd (as a projection's output is), which may be overwritten."""
    shapes = {'slice': (B, N, 3 * H * D + 8), 'batch_major': (N, B, 3, H, D), 'strided_dim': (B, N, 3, D, H)}
    base = torch.randn(shapes.get(layout, (B, N, 3, H, D)), device=DEVICE).to(dtype).requires_grad_()
    source = base * 1 if fresh else base
    if layout == 'slice':  # the qkv columns of a wider fused projection
        return base, source[..., 8:].view(B, N, 3, H, D)
    if layout == 'batch_major':  # tokens outermost, e.g. a sequence-first linear output
        return base, source.transpose(0, 1)
    if layout == 'strided_dim':  # head_dim is not the unit-stride dimension
        return base, source.transpose(-1, -2)
    return base, source


def make_tables(T, R, half, requires_grad):
    angles = torch.randn(T, R, half, device=DEVICE) * 3
    return angles.cos().requires_grad_(requires_grad), angles.sin().requires_grad_(requires_grad)


def assert_matches(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if actual.dtype == torch.float32:
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)
        return
    info = torch.finfo(actual.dtype)
    _, exponent = torch.frexp(expected.float().abs().clamp_min(info.tiny))
    ulp = torch.ldexp(torch.full_like(expected, info.eps, dtype=torch.float32), exponent - 1)
    excess = (actual.float() - expected.float()).abs() - ulp
    assert excess.max() <= 0, f'{(excess > 0).sum()} elements more than one ulp away'


def rope_and_grads(fn, base, qkv, cos, sin, prefix, grads):
    q, k, v = fn(qkv, cos, sin, prefix)
    inputs = [base] + [t for t in (cos, sin) if t.requires_grad]
    return (q, k, v), torch.autograd.grad((q, k, v), inputs, grads)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16], ids=['fp32', 'fp16', 'bf16'])
@pytest.mark.parametrize('case', CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize('backend', ['torch', pytest.param('triton', marks=kernel_test)])
def test_matches_reference(backend, case, dtype, monkeypatch):
    """The kernel, and the PyTorch path it is benchmarked against (in one-batch chunks, to cover the loop)."""
    if backend == 'triton':
        from timm_pe.ops.rope_triton import rope_qkv_triton as rope
    else:
        monkeypatch.setattr(rope_torch, '_CHUNK', 1)
        rope = rope_torch.rope_qkv_torch
    torch.manual_seed(0)
    B, N, H, D, half, T, prefix, layout, tables_learn = case
    base, qkv = make_qkv(B, N, H, D, layout, dtype)
    cos, sin = make_tables(T, N - prefix, half, tables_learn)
    grads = [torch.randn(B, H, N, D, device=DEVICE).to(dtype) for _ in range(3)]
    (q, k, v), dinputs = rope_and_grads(rope, base, qkv, cos, sin, prefix, grads)
    (rq, rk, rv), rdinputs = rope_and_grads(rope_qkv_reference, base, qkv, cos, sin, prefix, grads)

    assert_matches(q, rq)
    assert_matches(k, rk)
    # q and k share one token-major (B, N, 2, H, D) buffer
    token_major = (N * 2 * H * D, D, 2 * H * D, 1)
    assert q.stride() == k.stride() == token_major and k.data_ptr() - q.data_ptr() == H * D * q.element_size()
    assert v.data_ptr() == rv.data_ptr() and v.stride() == rv.stride()
    assert_matches(dinputs[0], rdinputs[0])
    for table_grad, ref_table_grad in zip(dinputs[1:], rdinputs[1:]):
        torch.testing.assert_close(table_grad, ref_table_grad)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=['fp32', 'bf16'])
@pytest.mark.parametrize('case', ['vit_cls', 'partial_72_registers', 'odd_rot_half'])
@pytest.mark.parametrize('backend', ['torch', pytest.param('triton', marks=kernel_test)])
def test_pair_order_matches_reference(backend, case, dtype):
    """``apply_rope(..., pair_order=True)``, as reparameterized layers call it, on each backend: dims 2j and
    2j + 1 rotate together; values and gradients, the tables' included, are the reference's."""
    torch.manual_seed(0)
    B, N, H, D, half, T, prefix, layout, tables_learn = CASES[case]
    base, qkv = make_qkv(B, N, H, D, layout, dtype)
    cos, sin = make_tables(T, N - prefix, half, tables_learn)
    grads = [torch.randn(B, H, N, D, device=DEVICE).to(dtype) for _ in range(3)]
    (q, k, v), dinputs = rope_and_grads(lambda *args: apply_rope(*args, backend=backend, pair_order=True),
                                        base, qkv, cos, sin, prefix, grads)
    (rq, rk, rv), rdinputs = rope_and_grads(lambda *args: rope_qkv_reference(*args, pairs=True),
                                            base, qkv, cos, sin, prefix, grads)
    assert_matches(q, rq)
    assert_matches(k, rk)
    assert v.data_ptr() == rv.data_ptr() and v.stride() == rv.stride()
    assert_matches(dinputs[0], rdinputs[0])
    for table_grad, ref_table_grad in zip(dinputs[1:], rdinputs[1:]):
        torch.testing.assert_close(table_grad, ref_table_grad)


@pytest.mark.parametrize('pairs', [False, True], ids=['rotate_half', 'pair_order'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=['fp32', 'bf16'])
@pytest.mark.parametrize('case', ['vit_cls', 'mixed_48_slice', 'partial_80_strided_dim', 'odd_rot_half'])
@pytest.mark.parametrize('backend', ['torch', pytest.param('triton', marks=kernel_test)])
def test_overwrite_qkv_in_training_rotates_in_place(backend, case, dtype, pairs):
    """``overwrite_qkv`` with autograd recording, as attention trains: q and k are views of qkv's own storage,
    rotated there, and values and gradients are the reference's; the tables' gradients too, taken from the
    rotated q and k (for bf16, from their rounded values: to a bf16 rounding of the gradients' scale)."""
    B, N, H, D, half, T, prefix, layout, tables_learn = CASES[case]
    torch.manual_seed(0)
    reference_base, reference = make_qkv(B, N, H, D, layout, dtype)
    torch.manual_seed(0)  # the same values again, in a projection-like output to overwrite
    base, qkv = make_qkv(B, N, H, D, layout, dtype, fresh=True)
    cos, sin = make_tables(T, N - prefix, half, tables_learn)
    grads = [torch.randn(B, H, N, D, device=DEVICE).to(dtype) for _ in range(3)]
    (rq, rk, rv), rdinputs = rope_and_grads(lambda *args: rope_qkv_reference(*args, pairs=pairs), reference_base,
                                            reference, cos, sin, prefix, grads)
    (q, k, v), dinputs = rope_and_grads(
        lambda *args: apply_rope(*args, backend=backend, overwrite_qkv=True, pair_order=pairs),
        base, qkv, cos, sin, prefix, grads)
    for got, slot in ((q, 0), (k, 1), (v, 2)):
        view = qkv[:, :, slot].transpose(1, 2)
        assert got.data_ptr() == view.data_ptr() and got.stride() == view.stride()
    assert_matches(q, rq)
    assert_matches(k, rk)
    assert torch.equal(v, rv)
    assert_matches(dinputs[0], rdinputs[0])
    for table_grad, ref_table_grad in zip(dinputs[1:], rdinputs[1:]):
        # bf16: the rotated q and k were rounded, so each term is off by up to a rounding of bf16
        tol = {} if dtype == torch.float32 else {'atol': torch.finfo(dtype).eps * float(ref_table_grad.abs().max()),
                                                 'rtol': 0}
        torch.testing.assert_close(table_grad, ref_table_grad, **tol)


@pytest.mark.parametrize('odd_entry', [None, 0., 1e-40, 1e30])
@pytest.mark.parametrize('backend', ['torch', pytest.param('triton', marks=kernel_test)])
def test_overwrite_qkv_in_training_keeps_qkv_where_it_must(backend, odd_entry):
    """Not in place, so q and k come out in a new buffer and qkv is left as it was, where its base is a leaf
    that trains (autograd forbids in-place ops there), or where learning tables hold an entry of modulus 0,
    subnormal or huge (the rotated q and k would not give the unrotated ones back for the table
    gradients): values and gradients are still the reference's."""
    B, N, H, D, half, T, prefix = 2, 9, 2, 16, 8, 2, 1
    torch.manual_seed(0)
    reference_base, reference = make_qkv(B, N, H, D, 'slice', torch.float32)
    torch.manual_seed(0)
    base, qkv = make_qkv(B, N, H, D, 'slice', torch.float32, fresh=odd_entry is not None)
    cos, sin = (t.detach() for t in make_tables(T, N - prefix, half, False))
    if odd_entry is not None:
        cos[1, 3, :2], sin[1, 3, :2] = odd_entry, 0.
    cos, sin = cos.requires_grad_(), sin.requires_grad_()
    before = qkv.detach().clone()
    grads = [torch.randn(B, H, N, D, device=DEVICE) for _ in range(3)]
    out, dinputs = rope_and_grads(lambda *args: apply_rope(*args, backend=backend, overwrite_qkv=True),
                                  base, qkv, cos, sin, prefix, grads)
    assert torch.equal(qkv.detach(), before) and out[0].data_ptr() != qkv[:, :, 0].data_ptr()
    ref, rdinputs = rope_and_grads(rope_qkv_reference, reference_base, reference, cos, sin, prefix, grads)
    for a, b in zip(out, ref):
        assert_matches(a, b)
    for a, b in zip(dinputs, rdinputs):
        torch.testing.assert_close(a, b, atol=1e-5 * float(b.abs().max()) + 1e-6, rtol=1e-4)


@kernel_test
@pytest.mark.parametrize('training', [False, True], ids=['inference', 'training'])
def test_autotuning_an_in_place_launch_gives_the_reference(training, monkeypatch):
    """On a GPU the first launch of each key times every surviving config by running the launch again and again;
    an in-place rotation must start from its input each time, or q and k come out rotated many times over.
    Here the autotuner is made to do the same (two configs, each run three times by the timer)."""
    from timm_pe.ops import rope_triton
    kernel = rope_triton._rope_fwd_kernel

    timed = []

    def timer_running_each_config_three_times(kernel_call, quantiles):
        timed.append(kernel_call)
        for _ in range(3):
            kernel_call()
        return [1.] * len(quantiles)

    monkeypatch.setattr(kernel, 'cache', {})  # Triton's autotuner internals: a fresh key, two configs to time
    monkeypatch.setattr(kernel, 'early_config_prune', lambda configs, named_args, **kwargs: configs[:2])
    monkeypatch.setattr(kernel, 'do_bench', timer_running_each_config_three_times)
    B, N, H, D, half, T, prefix, layout, tables_learn = CASES['vit_cls']
    torch.manual_seed(0)
    reference_base, reference = make_qkv(B, N, H, D, layout, torch.float32)
    torch.manual_seed(0)
    base, qkv = make_qkv(B, N, H, D, layout, torch.float32, fresh=True)
    cos, sin = make_tables(T, N - prefix, half, False)
    with torch.set_grad_enabled(training):
        q, k, _ = apply_rope(qkv, cos, sin, prefix, backend='triton', overwrite_qkv=True)
    rq, rk, _ = rope_qkv_reference(reference, cos, sin, prefix)
    assert len(timed) == 2 and len(kernel.cache) == 1 and q.data_ptr() == qkv[:, :, 0].data_ptr()
    assert_matches(q, rq)
    assert_matches(k, rk)


@kernel_test
def test_reparameterized_model_rotates_by_the_kernel(monkeypatch):
    """A model as timm's ``reparameterize_model`` leaves it, on the Triton backend: the kernel runs in pair
    order and the outputs and gradients are the plain model's."""
    import timm
    from timm.utils import reparameterize_model
    from tests.helpers import unit_scale_attention
    from timm_pe.ops import rope_triton
    monkeypatch.setenv('TIMM_PE_ROPE_BACKEND', 'triton')
    calls, kernel = [], rope_triton.rope_qkv_triton
    monkeypatch.setattr(rope_triton, 'rope_qkv_triton', lambda *args: calls.append(args[4]) or kernel(*args))
    torch.manual_seed(0)
    model = unit_scale_attention(timm.create_model('vit_tiny_rope_mixed', depth=1, img_size=32, patch_size=8,
                                                   reg_tokens=1)).to(DEVICE)
    reparam = reparameterize_model(model)
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    outs = []
    for m in (model, reparam):
        out = m(x)
        outs.append((out, *torch.autograd.grad(out.square().sum(), [m.patch_embed.proj.weight,
                                                                   m.blocks[0].attn.pos_enc.freqs])))
    assert calls == [False, True]
    for a, b in zip(*outs):  # to float32 rounding, relative to each tensor's scale
        torch.testing.assert_close(a, b, atol=1e-5 * b.abs().max().item(), rtol=1e-4)


@kernel_test
@pytest.mark.parametrize('name', ['vit_tiny_rope_axial', 'vit_tiny_rope_mixed'])
def test_model_trains_with_the_kernel_rotating_in_place(name, monkeypatch):
    """A training step on the Triton backend, as on a GPU: autograd keeps what the model with no encoding
    keeps plus less than one q and k buffer (the kernel rotated q and k in the projection's output), and the
    loss and every gradient, RoPE-Mixed's frequencies included, are the PyTorch backend's."""
    import timm
    from tests.helpers import unit_scale_attention
    from timm_pe.tools.bench import saved_for_backward_mb
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    saved, grads = {}, {}
    for backend in ('triton', 'torch'):
        monkeypatch.setenv('TIMM_PE_ROPE_BACKEND', backend)
        for model_name in ('vit_tiny_nope', name):
            torch.manual_seed(0)
            model = unit_scale_attention(timm.create_model(model_name, depth=1, embed_dim=32, num_heads=2,
                                                           img_size=32, patch_size=4)).to(DEVICE).train()
            saved[backend, model_name] = 2 ** 20 * saved_for_backward_mb(model, lambda: model(x))
        model.zero_grad()
        model(x).square().mean().backward()
        grads[backend] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    qk_bytes = 4 * x.shape[0] * (model.patch_embed.num_patches + 1) * 2 * model.embed_dim
    nope = saved['triton', 'vit_tiny_nope']
    assert nope <= saved['triton', name] < nope + qk_bytes
    assert any('freqs' in n for n in grads['torch']) == name.endswith('mixed')
    for n, want in grads['torch'].items():
        torch.testing.assert_close(grads['triton'][n], want, atol=1e-5, rtol=1e-4, msg=n)


@kernel_test
@pytest.mark.parametrize('via_env', [False, True])
def test_apply_rope_dispatches_to_triton(monkeypatch, via_env):
    from timm_pe.ops import rope_triton
    calls, kernel = [], rope_triton.rope_qkv_triton

    def spy(*args):
        calls.append(args)
        return kernel(*args)

    monkeypatch.setattr(rope_triton, 'rope_qkv_triton', spy)
    if via_env:
        monkeypatch.setenv('TIMM_PE_ROPE_BACKEND', 'triton')
    _, qkv = make_qkv(2, 9, 2, 16, 'contiguous', torch.float32)
    cos, sin = make_tables(1, 8, 8, False)
    out = apply_rope(qkv, cos, sin, 1, backend=None if via_env else 'triton')
    assert len(calls) == 1
    for a, b in zip(out, rope_qkv_reference(qkv, cos, sin, 1)):
        assert_matches(a, b)


@kernel_test
@pytest.mark.parametrize('tables_learn', [False, True])
def test_opcheck(tables_learn):
    """Schema, fake (meta) kernel, autograd registration and AOT dispatch with dynamic shapes."""
    from timm_pe.ops import rope_triton  # noqa: F401  registers the op
    _, qkv = make_qkv(2, 11, 2, 24, 'slice', torch.float32)
    cos, sin = make_tables(2, 10, 8, tables_learn)
    torch.library.opcheck(torch.ops.timm_pe.rope_qkv.default, (qkv, cos, sin, 1))


@pytest.mark.parametrize('backend', ['torch', pytest.param('triton', marks=kernel_test)])
def test_compile_fullgraph_forward_and_backward(backend):
    """Dynamo traces apply_rope without a graph break (the torch path switches to its expression, the
    Triton op is traced through its fake and backward registrations) and matches eager.

    backend='aot_eager' stops short of Inductor, whose C++ codegen only adds minutes here.
    """
    def attention(qkv, cos, sin):
        q, k, v = apply_rope(qkv, cos, sin, 1, backend=backend)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    torch.manual_seed(0)
    base, qkv = make_qkv(2, 9, 2, 16, 'slice', torch.float32)
    cos, sin = make_tables(2, 8, 6, True)
    compiled = torch.compile(attention, fullgraph=True, backend='aot_eager')
    results = []
    for fn in (compiled, attention):
        out = fn(qkv, cos, sin)
        results.append((out,) + torch.autograd.grad(out.square().sum(), (base, cos, sin)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@kernel_test
def test_fx_symbolic_trace_keeps_one_op_node():
    from timm_pe.ops.rope_triton import rope_qkv_triton
    traced = torch.fx.symbolic_trace(lambda qkv, cos, sin: rope_qkv_triton(qkv, cos, sin, 1))
    targets = [node.target for node in traced.graph.nodes if node.op == 'call_function']
    assert targets.count(torch.ops.timm_pe.rope_qkv) == 1
    _, qkv = make_qkv(1, 5, 2, 8, 'contiguous', torch.float32)
    cos, sin = make_tables(1, 4, 4, False)
    for a, b in zip(traced(qkv, cos, sin), rope_qkv_reference(qkv, cos, sin, 1)):
        assert_matches(a, b)


def test_launch_grid_fits_cuda_limits():
    """CUDA takes 2^31 - 1 programs on grid axis 0 but 65535 on the others; Swin's window attention passes
    batch x windows as the batch (65536 at batch 1024 with 64 windows)."""
    from timm_pe.ops import rope_triton
    grid = rope_triton._grid(1024 * 64, 49, 3)
    for config in rope_triton._CONFIGS:
        blocks, heads = grid(config.kwargs)
        assert blocks == -(-49 // config.kwargs['BLOCK_N']) * 1024 * 64 < 2 ** 31 and heads == 3


# (kernel, constexpr flags); each compiled for one activation dtype, tile height, head-dim block and warp count
COMPILED_VARIANTS = [('_rope_fwd_kernel', dict(PAIRS=pairs)) for pairs in (False, True)] + [
    ('_rope_bwd_kernel', dict(TABLE_GRAD=table_grad, HAS_DV=has_dv, PAIRS=pairs))
    for table_grad in (False, True) for has_dv in (False, True) for pairs in (False, True)]
ACTIVATION_POINTERS = {'QKV', 'OUT', 'DQ', 'DK', 'DV', 'DQKV'}
TABLE_POINTERS = {'COS', 'SIN', 'DCOS', 'DSIN'}  # float32
COMPILED_DTYPES = ('fp32', 'fp16', 'bf16')


@pytest.mark.triton_compiler
@pytest.mark.parametrize('dtype', COMPILED_DTYPES)
@pytest.mark.parametrize('index', range(len(COMPILED_VARIANTS)),
                         ids=[f'{name[6:9]}-' + '-'.join(f'{k}{int(v)}' for k, v in flags.items())
                              for name, flags in COMPILED_VARIANTS])
def test_kernel_compiles_for_hopper(index, dtype):
    """Triton's compiler, which the interpreter never runs, takes every kernel variant down to sm_90 machine
    code (no GPU needed): type, layout and register-allocation errors the interpreter lets pass fail here.
    The tile configs and head-dim blocks the autotuner and the launcher may pick are spread over the cases."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from timm_pe.ops import rope_triton
    name, flags = COMPILED_VARIANTS[index]
    kernel = getattr(rope_triton, name).fn  # the JITFunction under the autotuner
    dtype_index = COMPILED_DTYPES.index(dtype)  # each dtype meets every config and head-dim block
    config = rope_triton._CONFIGS[(index + dtype_index) % len(rope_triton._CONFIGS)]
    block_d = (32, 64, 128)[(index + 2 * dtype_index) % 3]
    signature = {p.name: 'constexpr' if p.is_constexpr else
                 f'*{dtype}' if p.name in ACTIVATION_POINTERS else
                 '*fp32' if p.name in TABLE_POINTERS else 'i32'
                 for p in kernel.params}
    source = ASTSource(kernel, signature, constexprs=dict(flags, BLOCK_D=block_d, **config.kwargs))
    compiled = triton.compile(source, target=GPUTarget('cuda', 90, 32), options=dict(num_warps=config.num_warps))
    assert compiled.asm['cubin'] and '.target sm_90' in compiled.asm['ptx']


@pytest.mark.kernel_runner
def test_kernels_in_child_interpreter():
    root = os.path.dirname(os.path.dirname(os.path.abspath(timm_pe.__file__)))
    child = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', os.path.abspath(__file__)],
        cwd=root, env={**os.environ, 'TRITON_INTERPRET': '1'}, capture_output=True, text=True)
    summary = child.stdout.strip().splitlines()[-1] if child.stdout.strip() else ''
    assert child.returncode == 0 and ' passed' in summary and 'skipped' not in summary, \
        child.stdout[-20000:] + child.stderr[-5000:]
