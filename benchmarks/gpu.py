"""The one-command GPU check: the Triton RoPE kernel proven against the reference, timed against a copy,
timm and torch.compile, and the thesis (RoPE keeps the fused SDPA kernels, biases do not) measured on
whole models.

On the device machine, from the source tree (no install; torch, triton and matplotlib of its image, and
the timm that CI tests, carried as a wheel), as one device ``run`` with ``carry`` ``[".whl"]`` and
``timeout_s`` 540 (eight files come back, nine with ``errors.txt``: the seven below and the log). Here, once:
``pip download --no-deps --only-binary=:all: -d .whl timm==1.0.31`` (``.whl/`` is git-ignored); there::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit; set -o pipefail;
    PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu --out $OUT 2>&1 | tee $OUT/gpu.log

It is sized to finish in 5 to 6 minutes on one H200 (an estimate: it has not run on a GPU yet). Each compile
of a kernel specialization costs about a second there, so the correctness cases meet every pair of factor
values (not their whole product) and pin one tile config each: 60 compiles, where the product took about
590 (a test counts them). The speed and thesis sections autotune from empty caches; ``--budget-s`` stops
starting thesis groups that many seconds after the first (the rest are recorded as skipped). Run without the
wheel, it stops at once if the image's timm is older than pyproject.toml's floor. The smoke run below, and
the tests' compile of every kernel variant for sm_90, pass with Triton 3.6, the image's. ``--smoke`` runs
the same code paths on CPU in seconds (the kernel under ``TRITON_INTERPRET=1``, tiny
shapes, a plain timer for ``do_bench``); the test suite runs it so the script cannot rot.

Writes under ``--out``: ``correctness.csv`` (every case's max error, in ulps for half types, and whether
the poisoned outputs were fully overwritten), ``kernel_speed.csv`` / ``.png`` (median ms, effective GB/s,
fraction of a device copy of the same bytes, speedup over timm and over torch.compile), ``thesis.csv`` /
``.png`` (throughput, step time, ratio to APE, peak memory and the SDPA backend each model ran),
``autotune.csv`` (the config Triton picked per key, per section) and ``env.json``. A case, timing or model
group that raises is recorded (its row says so, the traceback goes to ``errors.txt``) and the run goes on, so
one failure costs its own figure only. Exit status 1 if any correctness case fails or anything raised.
"""
import argparse
import contextlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, TypeVar

MIN_TIMM = (1, 0, 31)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, default=Path('out/gpu'))
    parser.add_argument('--smoke', action='store_true', help='CPU, interpreter, tiny shapes: seconds')
    parser.add_argument('--sections', nargs='+', default=['correctness', 'speed', 'thesis'],
                        choices=['correctness', 'speed', 'thesis'])
    parser.add_argument('--budget-s', type=float, default=180.,
                        help='no new thesis group starts this many seconds after the first')
    return parser.parse_args(argv)


ARGS = parse_args() if __name__ == '__main__' else None
if ARGS is not None and ARGS.smoke:  # before the kernels are first imported: Triton reads it at decoration
    os.environ['TRITON_INTERPRET'] = '1'

import torch  # noqa: E402

import timm  # noqa: E402

if ARGS is not None and tuple(int(p) for p in timm.__version__.split('.')[:3] if p.isdigit()) < MIN_TIMM:
    sys.exit(f'timm {timm.__version__} is older than {".".join(map(str, MIN_TIMM))}: carry a wheel (see this '
             "script's docstring)")

import timm_pe  # noqa: E402,F401
from timm_pe.ops import apply_rope, rope_triton  # noqa: E402
from timm_pe.tools.bench import cuda_peak_memory_mb  # noqa: E402
from timm_pe.tools.common import pyplot, write_csv  # noqa: E402
from timm_pe.tools.timing import interleaved_times, model_steps  # noqa: E402

from benchmarks.overhead import ratio_rows  # noqa: E402
from benchmarks.rope import PREFIX, plain_rope, timm_eva_rope  # noqa: E402
from tests.reference import rope_qkv_reference  # noqa: E402

HEAD_DIMS = (32, 48, 64, 80, 96, 128)
SPEED_MODELS = {'vit_s': (6, 64), 'vit_b': (12, 64), 'vit_l': (16, 64)}  # heads, head dim
ENCODINGS = ('ape', 'rope_axial', 'rope_mixed', 'alibi2d', 'rpb')
SDPA_OPS = {'flash': '_flash_attention', 'efficient': '_efficient_attention', 'cudnn': '_cudnn_attention',
            'math': '_attention_math'}
ERRORS: List[str] = []  # every failure ``attempt`` caught this run, with its traceback
T = TypeVar('T')


def attempt(what: str, fn: Callable[[], T], on_error: Callable[[str], T] = lambda message: None) -> T:
    """``fn()``; where it raises, the traceback printed and kept in ``ERRORS`` and ``on_error(message)`` returned:
    on a one-shot device session a failure costs its own figure, not every figure after it."""
    try:
        return fn()
    except Exception as exc:
        ERRORS.append(f'{what}\n{traceback.format_exc()}')
        print(f'FAILED {what}:\n{traceback.format_exc()}', flush=True)
        return on_error(f'{type(exc).__name__}: {exc}')


# ----------------------------------------------------------------------------------------------- correctness

@contextlib.contextmanager
def poisoned_allocations() -> Iterator[None]:
    """Every ``Tensor.new_empty`` (how the ops allocate their outputs) returns NaN-filled memory, so an
    element a kernel never writes shows up as a NaN instead of passing by luck."""
    new_empty = torch.Tensor.new_empty

    def poisoned(self, *size, **kwargs):
        out = new_empty(self, *size, **kwargs)
        return out.fill_(float('nan')) if out.is_floating_point() else out

    torch.Tensor.new_empty = poisoned
    try:
        yield
    finally:
        torch.Tensor.new_empty = new_empty


def ulp_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest |actual - expected| in units of the last place of ``expected`` in its dtype (NaN: inf)."""
    info = torch.finfo(expected.dtype)
    _, exponent = torch.frexp(expected.float().abs().clamp_min(info.tiny))
    ulp = torch.ldexp(torch.full_like(expected, info.eps, dtype=torch.float32), exponent - 1)
    err = ((actual.detach().float() - expected.detach().float()).abs() / ulp).nan_to_num(float('inf'))
    return float(err.max())


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a - e| / (1 + |e|) in float32 (NaN: inf)."""
    actual, expected = actual.detach().float(), expected.detach().float()
    err = (actual - expected).abs() / (1 + expected.abs())
    return float(err.nan_to_num(float('inf')).max())


def covering_cases(factors: Dict[str, tuple]) -> List[dict]:
    """Cases in which every value of each factor meets every value of each other factor at least once (all-pairs
    testing, built greedily): a few dozen cases find what the full product's thousands would find of faults that
    need two factors to show, and each case is a kernel compile on the GPU."""
    names = list(factors)

    def pairs(case):
        return {(a, case[a], b, case[b]) for i, a in enumerate(names) for b in names[i + 1:] if a in case and b in case}

    uncovered = {(a, va, b, vb): None for i, a in enumerate(names) for b in names[i + 1:]
                 for va in factors[a] for vb in factors[b]}  # a dict: insertion order keeps the result fixed
    cases = []
    while uncovered:
        a, va, b, vb = next(iter(uncovered))
        case = {a: va, b: vb}
        for name in names:
            if name not in case:
                case[name] = max(factors[name], key=lambda v: len(pairs({**case, name: v}).intersection(uncovered)))
        for pair in pairs(case):
            uncovered.pop(pair, None)
        cases.append({name: case[name] for name in names})
    return cases


def correctness_factors(smoke: bool) -> Dict[str, tuple]:
    """Head dim, tile config (an index into the kernels' config list), dtype, prefix tokens, full or partial
    rotation, qkv contiguous or a slice of a wider output, token count, tables shared or per head, fixed or
    learning, rotate-half or pair order, out of place or in place."""
    configs = tuple(range(len(rope_triton._CONFIGS)))
    return dict(D=(32, 48) if smoke else HEAD_DIMS, config=configs[::2] if smoke else configs,
                dtype=(torch.float32, torch.bfloat16) if smoke else (torch.float32, torch.float16, torch.bfloat16),
                prefix=(0, 5) if smoke else (0, 1, 5), rot=('full', 'partial'), layout=('contiguous', 'slice'),
                tokens=(13, 37) if smoke else (13, 37, 197), table_heads=(1, 3), tables_learn=(False, True),
                pairs=(False, True), overwrite=(False, True))


def correctness_cases(smoke: bool) -> List[dict]:
    """Every pair of values of ``correctness_factors``; then one in-place case autotuned from a fresh key, as a
    first call on a GPU is, at a shape where every config survives pruning and is timed on the live input."""
    cases = covering_cases(correctness_factors(smoke))
    cases.append(dict(cases[0], D=64, tokens=197, config='autotuned', overwrite=True))
    return [dict(case, B=2, H=3, N=case['prefix'] + case['tokens'],
                 half=case['D'] // (2 if case['rot'] == 'full' else 4)) for case in cases]


@contextlib.contextmanager
def kernel_config(config) -> Iterator[None]:
    """Both kernels launch with ``rope_triton._CONFIGS[config]`` alone, untimed and unpruned (so a case may run a
    tile that pruning would never pick for its shape), or with ``'autotuned'`` from empty autotuner caches
    (Triton's ``Autotuner.configs`` and ``.cache``)."""
    kernels = (rope_triton._rope_fwd_kernel, rope_triton._rope_bwd_kernel)
    saved = [(k.configs, k.cache) for k in kernels]
    try:
        for k in kernels:
            if config == 'autotuned':
                k.cache = {}
            else:
                k.configs = [rope_triton._CONFIGS[config]]
        yield
    finally:
        for k, (configs, cache) in zip(kernels, saved):
            k.configs, k.cache = configs, cache


def make_inputs(case: dict, device: torch.device):
    """base (the leaf), qkv (a view of it, or with ``overwrite`` of a copy autograd made, as a projection's
    output is, to be rotated in place) and the tables."""
    B, N, H, D = case['B'], case['N'], case['H'], case['D']
    width = 3 * H * D + (8 if case['layout'] == 'slice' else 0)  # slice: the qkv columns of a wider output
    base = torch.randn(B, N, width, device=device).to(case['dtype']).requires_grad_()
    qkv = (base * 1 if case.get('overwrite') else base)[..., width - 3 * H * D:].view(B, N, 3, H, D)
    angles = torch.randn(case['table_heads'], N - case['prefix'], case['half'], device=device) * 3
    cos, sin = (t.requires_grad_(case['tables_learn']) for t in (angles.cos(), angles.sin()))
    return base, qkv, cos, sin


def run_case(case: dict, device: torch.device) -> dict:
    torch.manual_seed(0)
    base, qkv, cos, sin = make_inputs(case, device)
    grads = [torch.randn(case['B'], case['H'], case['N'], case['D'], device=device).to(case['dtype']) for _ in range(3)]
    inputs = [base] + [t for t in (cos, sin) if t.requires_grad]
    ref = rope_qkv_reference(qkv, cos, sin, case['prefix'], pairs=case['pairs'])
    dref = torch.autograd.grad(ref, inputs, grads, retain_graph=True)  # qkv's own graph serves once more
    with poisoned_allocations(), kernel_config(case['config']):
        out = apply_rope(qkv, cos, sin, case['prefix'], backend='triton', pair_order=case['pairs'],
                         overwrite_qkv=case['overwrite'])
        dout = torch.autograd.grad(out, inputs, grads)
    low = case['dtype'] != torch.float32
    err = ulp_error if low else rel_error
    row = case_fields(case)
    # in place the table gradients come from the rotated q and k, which half types rounded: relative to their
    # scale they are good to about that rounding (two epsilons allowed: the sums may cancel), not to float32 sums
    table_err = scaled_error if case['overwrite'] and low else rel_error
    row.update(fwd_err=max(err(a, b) for a, b in zip(out[:2], ref[:2])), dqkv_err=err(dout[0], dref[0]),
               dtable_err=max((table_err(a, b) for a, b in zip(dout[1:], dref[1:])), default=0.),
               v_is_view=out[2].data_ptr() == ref[2].data_ptr(), err_unit='ulp' if low else 'rel',
               in_place=out[0].data_ptr() == qkv[:, :, 0].data_ptr())
    # fp32: FMA contraction on GPU; half types: one rounding of the float32 result; table grads: float32
    # sums over batch, heads, q and k in another order
    limit = 1. if low else 1e-5
    table_limit = 2 * torch.finfo(case['dtype']).eps if table_err is scaled_error else 1e-4
    row['ok'] = bool(row['fwd_err'] <= limit and row['dqkv_err'] <= limit and row['dtable_err'] <= table_limit
                     and row['v_is_view'] and row['in_place'] == case['overwrite'])
    return row


def scaled_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a - e| / max |e| in float32 (NaN: inf)."""
    actual, expected = actual.detach().float(), expected.detach().float()
    return float(((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).nan_to_num(float('inf')))


def case_fields(case: dict) -> dict:
    return {k: (str(v).split('.')[-1] if k == 'dtype' else v) for k, v in case.items()}


def compiled_case(device: torch.device) -> dict:
    """torch.compile(fullgraph) of rotation + SDPA, forward and backward, against eager: the custom-op path."""
    torch.manual_seed(0)
    case = dict(dtype=torch.float32, D=64, prefix=1, rot='full', half=32, layout='slice', B=2, N=50, H=3,
                table_heads=3, tables_learn=True, pairs=False, overwrite=False)
    base, qkv, cos, sin = make_inputs(case, device)

    def attention(qkv, cos, sin):
        return torch.nn.functional.scaled_dot_product_attention(*apply_rope(qkv, cos, sin, 1, backend='triton'))

    compiled = torch.compile(attention, fullgraph=True, backend='aot_eager' if device.type == 'cpu' else 'inductor')
    results = []
    for fn in (compiled, attention):
        out = fn(qkv, cos, sin)
        results.append((out,) + torch.autograd.grad(out.square().sum(), (base, cos, sin)))
    errs = [rel_error(a, b) for a, b in zip(*results)]
    return dict(case='compiled_fullgraph', fwd_err=errs[0], dqkv_err=errs[1], dtable_err=max(errs[2:]),
                err_unit='rel', ok=max(errs) <= 1e-4)


def check_correctness(device: torch.device, smoke: bool, out_dir: Path) -> bool:
    rows = [attempt(f'correctness case {case_fields(case)}', lambda: run_case(case, device),
                    lambda message: dict(case_fields(case), ok=False, error=message))
            for case in correctness_cases(smoke)]
    rows.append(attempt('correctness of the compiled graph', lambda: compiled_case(device),
                        lambda message: dict(case='compiled_fullgraph', ok=False, error=message)))
    write_csv(rows, out_dir / 'correctness.csv', list(dict.fromkeys(k for r in rows for k in r)))
    bad = [r for r in rows if not r['ok']]
    print(f'correctness: {len(rows) - len(bad)}/{len(rows)} cases pass')
    for r in bad:
        print('  FAIL', {k: v for k, v in r.items() if k not in ('ok',)})
    return not bad


# ----------------------------------------------------------------------------------------------- kernel speed

def bench_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Median ms: ``triton.testing.do_bench`` on CUDA, a few plain timed calls elsewhere (smoke only)."""
    if device.type == 'cuda':
        import triton.testing
        return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode='median'))
    return 1e3 * sorted(interleaved_times({'fn': fn}, reps=3)['fn'])[1]


def speed_shapes(smoke: bool):
    if smoke:
        return [('vit_s', 2, 17, torch.bfloat16)]
    return [(m, b, n, torch.bfloat16) for m in SPEED_MODELS for b in (64, 256) for n in (197, 577, 1025)] + \
        [('vit_b', 256, 577, torch.float32), ('vit_b', 256, 577, torch.float16)]


def kernel_speed(device: torch.device, smoke: bool, out_dir: Path) -> List[dict]:
    # one dynamic-shape compile serves every shape (a static one per shape would spend the budget compiling)
    backend = 'aot_eager' if smoke else 'inductor'
    plain_compiled = torch.compile(plain_rope, dynamic=True, backend=backend)

    def rope_grad_step(fn, qkv, cos, sin):
        outputs = fn(qkv, cos, sin)
        # any gradient of the right shape (only the pass is timed); grad() leaves no .grad to accumulate into
        torch.autograd.grad(outputs, qkv, [t.detach() for t in outputs])

    rows = []
    for model, B, N, dtype in speed_shapes(smoke):
        H, D = SPEED_MODELS[model]
        qkv = torch.randn(B, N, 3 * H * D, device=device).to(dtype).view(B, N, 3, H, D)
        angles = torch.randn(1, N - PREFIX, D // 2, device=device)
        cos, sin = angles.cos(), angles.sin()
        rope_table = torch.cat([sin, sin, cos, cos], -1)[0]  # timm's sin | cos layout
        src = torch.randn(2 * qkv[:, :, :2].numel(), device=device).to(dtype)  # copy: read q, k, write q, k
        dst = torch.empty_like(src[: src.numel() // 2])
        fns = {
            'copy': lambda: dst.copy_(src[: dst.numel()]),
            'timm_eva': lambda: timm_eva_rope(qkv.flatten(2), rope_table, H),
            'plain_compiled': lambda: plain_compiled(qkv, cos, sin),
            'triton': lambda: apply_rope(qkv, cos, sin, PREFIX, backend='triton'),
            # rotating the same qkv again and again: the values drift, the bytes moved are the same
            'triton_in_place': lambda: apply_rope(qkv, cos, sin, PREFIX, backend='triton', overwrite_qkv=True),
        }
        qkv_g = qkv.detach().requires_grad_()
        fns['triton_fwd_bwd'] = lambda: rope_grad_step(lambda *a: apply_rope(*a, PREFIX, backend='triton'), qkv_g,
                                                       cos, sin)
        fns['plain_compiled_fwd_bwd'] = lambda: rope_grad_step(
            lambda *a: (*plain_compiled(*a)[:2], a[0][:, :, 2].transpose(1, 2)), qkv_g, cos, sin)
        shape = f'{model} B{B} N{N} {str(dtype).split(".")[-1]}'
        ms = {name: attempt(f'speed {shape} {name}', lambda: bench_ms(fn, device)) for name, fn in fns.items()}
        moved = 2 * dst.numel() * dst.element_size()  # bytes read plus written by a rotation of q and k
        for name, t in ms.items():
            compiled = ms['plain_compiled_fwd_bwd' if 'bwd' in name else 'plain_compiled']
            rows.append(dict(model=model, heads=H, head_dim=D, batch=B, tokens=N, dtype=str(dtype).split('.')[-1],
                             impl=name, median_ms=t and round(t, 4), gb_per_s=ratio(moved / 1e6, t, 1),
                             frac_of_copy=ratio(ms['copy'], t, 3) if 'bwd' not in name else None,
                             speedup_vs_timm=ratio(ms['timm_eva'], t, 2) if 'bwd' not in name else None,
                             speedup_vs_compiled=ratio(compiled, t, 2)))
        tri = rows[-len(ms):][list(ms).index('triton')]
        print(f'speed {shape}: triton {tri["median_ms"]} ms, {tri["frac_of_copy"]} of copy, {tri["speedup_vs_timm"]}x '
              f'timm, {tri["speedup_vs_compiled"]}x compiled', flush=True)
    write_csv(rows, out_dir / 'kernel_speed.csv', list(rows[0]))
    plot_speed(rows, out_dir / 'kernel_speed.png')
    return rows


def ratio(a: Optional[float], b: Optional[float], digits: int) -> Optional[float]:
    """a / b rounded, None where either is missing (a timing that failed)."""
    return None if a is None or not b else round(a / b, digits)


def plot_speed(rows: List[dict], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    shapes = list(dict.fromkeys((r['model'], r['batch'], r['tokens'], r['dtype']) for r in rows))
    fig, ax = plt.subplots(figsize=(max(8, len(shapes) * 0.7), 4.5))
    impls = ['triton', 'plain_compiled', 'timm_eva']
    for i, impl in enumerate(impls):
        values = [next(r['frac_of_copy'] or 0 for r in rows if (r['model'], r['batch'], r['tokens'], r['dtype']) == s
                       and r['impl'] == impl) for s in shapes]
        ax.bar([j + (i - 1) * 0.27 for j in range(len(shapes))], values, width=0.27, label=impl)
    ax.axhline(0.8, color='grey', linestyle='--', linewidth=0.8, label='target: 0.8 of copy')
    ax.set_xticks(range(len(shapes)))
    ax.set_xticklabels([f'{m}\nB{b} N{n}\n{d}' for m, b, n, d in shapes], fontsize=6)
    ax.set_ylabel('bandwidth / device copy of the same bytes')
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def autotune_rows(section: str) -> List[dict]:
    """The config the autotuner settled on per key (head dim, variant flags, argument dtypes) in a section."""
    rows = []
    for name in ('_rope_fwd_kernel', '_rope_bwd_kernel'):
        for key, config in getattr(rope_triton, name).cache.items():
            rows.append(dict(section=section, kernel=name, key=str(key), block_n=config.kwargs.get('BLOCK_N'),
                             num_warps=config.num_warps, num_stages=config.num_stages))
    return rows


# ----------------------------------------------------------------------------------------------- the thesis

def sdpa_backends(step: Callable[[], None]) -> str:
    """Which SDPA implementations one call of ``step`` dispatched to, from the profiler's op names."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    names = {e.key for e in prof.key_averages()}
    found = [b for b, op in SDPA_OPS.items() if any(op in n for n in names)]
    return '+'.join(found) or 'none'


def thesis_groups(smoke: bool):
    """(group, model names with APE first, image size, inference batch, training batch)."""
    if smoke:
        kw = dict(depth=1, embed_dim=32, num_heads=2)
        return [('vit_tiny', [f'vit_tiny_{e}' for e in ENCODINGS], 32, 2, 2, kw),
                ('swin_tiny', ['swin_tiny_rpb', 'swin_tiny_rope_axial'], 64, 1, 1,
                 dict(depths=(1, 1, 1, 1), embed_dim=16, num_heads=(1, 1, 1, 1), window_size=2))]
    vits = [(f'vit_{width}', [f'vit_{width}_{e}' for e in ENCODINGS], size, 256 if width == 'small' else 128,
             128 if width == 'small' else 64, {}) for size in (224, 384, 512) for width in ('small', 'base')]
    swin = ('swin_tiny', ['swin_tiny_rpb', 'swin_tiny_rope_axial', 'swin_tiny_rope_mixed'], 224, 128, 64, {})
    return vits[:2] + [swin] + vits[2:]  # the budget skips from the end: the largest images are skipped first


def thesis(device: torch.device, smoke: bool, out_dir: Path, budget_s: float) -> List[dict]:
    """Every group of ``thesis_groups`` that starts within ``budget_s`` of the first; those after are recorded as
    skipped."""
    start, rows = time.time(), []
    for group, names, size, infer_batch, train_batch, kwargs in thesis_groups(smoke):
        if time.time() - start > budget_s:
            rows += [dict(group=group, img_size=size, model=n, phase=p, skipped='budget') for n in names
                     for p in ('infer', 'train')]
            print(f'thesis {group} {size}px: skipped (budget)')
            continue
        rows += attempt(f'thesis {group} {size}px', lambda: thesis_group(
            device, smoke, group, names, size, infer_batch, train_batch, kwargs),
            lambda message: [dict(group=group, img_size=size, model=n, phase=p, skipped=message) for n in names
                             for p in ('infer', 'train')])
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    write_csv(rows, out_dir / 'thesis.csv', list(dict.fromkeys(k for r in rows for k in r)))
    plot_thesis([r for r in rows if 'skipped' not in r], out_dir / 'thesis.png')
    return rows


def thesis_group(device: torch.device, smoke: bool, group: str, names: List[str], size: int, infer_batch: int,
                 train_batch: int, kwargs: dict) -> List[dict]:
    """One group's models (the first the baseline) timed round-robin, inference then training, bf16 autocast."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == 'cuda' else (lambda: None)
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if device.type == 'cuda' else \
        contextlib.nullcontext
    reps, warmup = (2, 1) if smoke else (10, 3)
    models = {n: timm.create_model(n, img_size=size, **kwargs).to(device) for n in names}
    rows = []
    for phase, batch in (('infer', infer_batch), ('train', train_batch)):
        images = torch.randn(batch, 3, size, size, device=device)
        steps = {n: model_steps(m, images, phase == 'train', amp) for n, m in models.items()}
        times = interleaved_times(steps, reps, warmup, sync)
        for row in ratio_rows(times, names[0], batch, group=group, img_size=size, phase=phase):
            step = steps[row['model']]
            row.update(sdpa_backend=sdpa_backends(step), peak_mem_mb=cuda_peak_memory_mb(step, device),
                       tokens=getattr(models[row['model']], 'patch_embed').num_patches)
            rows.append(row)
            print(f'thesis {group} {size}px {phase} {row["model"]}: {row["samples_per_sec"]:.1f} img/s, '
                  f'{row["vs_baseline_paired"]:.3f} of {names[0]}, {row["sdpa_backend"]}, '
                  f'{row["peak_mem_mb"]} MB', flush=True)
    return rows


def plot_thesis(rows: List[dict], path: Path) -> None:
    plt = pyplot()
    if plt is None or not rows:
        return
    groups = list(dict.fromkeys(r['group'] for r in rows))
    fig, axes = plt.subplots(2, len(groups), figsize=(4.5 * len(groups), 7), squeeze=False)
    for col, group in enumerate(groups):
        for row_i, phase in enumerate(('infer', 'train')):
            ax = axes[row_i][col]
            sel = [r for r in rows if r['group'] == group and r['phase'] == phase]
            for model in dict.fromkeys(r['model'] for r in sel):
                pts = sorted((r['img_size'], r['vs_baseline_paired']) for r in sel if r['model'] == model)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker='o', label=model.split('_', 2)[-1])
            ax.axhline(1, color='grey', linewidth=0.8)
            ax.set_title(f'{group} {phase}', fontsize=9)
            ax.set_xlabel('image size (px)')
            ax.set_ylabel('throughput / first model')
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- main

def environment(device: torch.device) -> Dict[str, object]:
    import triton
    env = dict(python=platform.python_version(), torch=torch.__version__, triton=triton.__version__,
               timm=timm.__version__, device=device.type, interpreter=os.environ.get('TRITON_INTERPRET') == '1')
    if device.type == 'cuda':
        env.update(gpu=torch.cuda.get_device_name(device), capability=torch.cuda.get_device_capability(device))
    return env


def main(args) -> int:
    if not args.smoke and not torch.cuda.is_available():
        print('no CUDA device: run with --smoke for the CPU check')
        return 2
    device = torch.device('cpu' if args.smoke else 'cuda')
    start = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    print(json.dumps(env))
    ok, tuned = True, []
    if 'correctness' in args.sections:
        ok = attempt('correctness', lambda: check_correctness(device, args.smoke, args.out), lambda message: False)
        print(f'[{time.time() - start:.0f}s] correctness done', flush=True)
    # each section tunes at its own first shapes, not at the ones a section before it left in the caches
    if 'speed' in args.sections:
        with kernel_config('autotuned'):
            attempt('kernel speed', lambda: kernel_speed(device, args.smoke, args.out))
            tuned += autotune_rows('speed')
        print(f'[{time.time() - start:.0f}s] kernel speed done', flush=True)
    if 'thesis' in args.sections:
        with kernel_config('autotuned'):
            attempt('thesis', lambda: thesis(device, args.smoke, args.out, args.budget_s))
            tuned += autotune_rows('thesis')
        print(f'[{time.time() - start:.0f}s] thesis done', flush=True)
    if tuned:
        write_csv(tuned, args.out / 'autotune.csv', list(tuned[0]))
    env.update(seconds=round(time.time() - start, 1), correctness_ok=ok, errors=len(ERRORS))
    (args.out / 'env.json').write_text(json.dumps(env, indent=1))
    if ERRORS:
        (args.out / 'errors.txt').write_text('\n'.join(ERRORS))
        print(f'{len(ERRORS)} failure(s), tracebacks in {args.out / "errors.txt"}')
        ok = False
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main(ARGS))
