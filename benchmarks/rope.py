"""RoPE application speed: ``apply_rope`` against timm's EVA rotation, a plain expression and a copy.

Run from the repository root: ``python -m benchmarks.rope [--quick]``. Prints a table and writes
``results/bench_rope.csv``. Every implementation turns the same fused qkv (B, N, 3, heads, head_dim)
with a class token into rotated q and k (B, heads, N, head_dim) plus v:

- ``copy``: a preallocated copy of as many bytes as q and k, the memory-bound limit; ``copy+alloc``
  the same into a fresh tensor, as every implementation must allocate its output;
- ``timm``: timm 1.0's ``EvaAttention`` (reshape, permute, unbind, then per q and k ``torch.cat`` of the
  prefix with ``apply_rot_embed_cat`` on its precomputed (N - 1, 2 * head_dim) sin|cos table);
- ``plain``: the textbook expression on timm_pe's (1, N - 1, head_dim / 2) tables, eager and compiled;
- ``apply_rope``: timm_pe's torch path, eager and compiled; the Triton kernel when CUDA is available.

Reported per row: median time over interleaved repetitions (a busy shared machine disturbs the median
least), effective bandwidth (bytes of q and k read plus written, per second), time relative to the
copy, and speedup over timm. Nothing here asserts on time. One intra-op thread by default (``--threads``):
on a shared 2-core machine each OpenMP region of a second thread waits for a time slice, and the
many-op eager paths would then time the scheduler.
"""
import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Dict

import torch
from timm.layers.pos_embed_sincos import apply_rot_embed_cat

from timm_pe.ops import apply_rope
from timm_pe.tools.common import write_csv

MODELS = {'vit_s': (6, 64), 'vit_b': (12, 64)}  # heads, head_dim
PREFIX = 1


def timm_eva_rope(qkv: torch.Tensor, rope: torch.Tensor, num_heads: int):
    """timm 1.0.31 ``EvaAttention.forward`` from the qkv linear's (B, N, 3 * dim) output to q, k, v."""
    B, N, _ = qkv.shape
    q, k, v = qkv.reshape(B, N, 3, num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    npt = PREFIX
    q = torch.cat([q[:, :, :npt, :], apply_rot_embed_cat(q[:, :, npt:, :], rope, half=True)], dim=2).type_as(v)
    k = torch.cat([k[:, :, :npt, :], apply_rot_embed_cat(k[:, :, npt:, :], rope, half=True)], dim=2).type_as(v)
    return q, k, v


def plain_rope(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate-half as one would write it, float32 math, one rounding, prefix kept."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    half = cos.shape[-1]

    def rotate(x):
        x1, x2 = x[..., PREFIX:, :half], x[..., PREFIX:, half:]
        rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)
        return torch.cat([x[..., :PREFIX, :], rotated], -2)

    return rotate(q), rotate(k), v


def median_ms(fns: Dict[str, Callable[[], object]], reps: int, device: torch.device) -> Dict[str, float]:
    """Median wall time of each function, timed round-robin so that load changes hit all alike."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(reps):
        for name, fn in fns.items():
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def bench_shape(model: str, batch: int, tokens: int, dtype: torch.dtype, reps: int, device: torch.device,
                compile: bool):
    heads, head_dim = MODELS[model]
    torch._dynamo.reset()  # a fresh compile per shape: no recompile limit, no dynamic-shape kernels
    qkv = torch.randn(batch, tokens, 3 * heads * head_dim, device=device).to(dtype).view(
        batch, tokens, 3, heads, head_dim)
    angles = torch.randn(1, tokens - PREFIX, head_dim // 2, device=device)
    cos, sin = angles.cos(), angles.sin()
    rope = torch.cat([sin, sin, cos, cos], -1)[0]  # timm's layout: sin | cos, each over the whole head_dim
    src = torch.randn(2 * qkv[:, :, :2].numel(), device=device).to(dtype)
    dst = torch.empty_like(src)

    expected = timm_eva_rope(qkv.flatten(2), rope, heads)
    for got in (plain_rope(qkv, cos, sin), apply_rope(qkv, cos, sin, PREFIX)):
        assert all(torch.equal(a, b) for a, b in zip(got, expected)), 'not the same work as timm, bit for bit'

    fns = {
        'copy': lambda: dst.copy_(src),
        'copy+alloc': lambda: src.clone(),
        'timm': lambda: timm_eva_rope(qkv.flatten(2), rope, heads),
        'plain': lambda: plain_rope(qkv, cos, sin),
        'apply_rope': lambda: apply_rope(qkv, cos, sin, PREFIX, backend='torch'),
    }
    if compile:
        plain_c = torch.compile(plain_rope, fullgraph=True, dynamic=False)
        rope_c = torch.compile(lambda *a: apply_rope(*a, PREFIX, backend='torch'), fullgraph=True, dynamic=False)
        fns['plain compiled'] = lambda: plain_c(qkv, cos, sin)
        fns['apply_rope compiled'] = lambda: rope_c(qkv, cos, sin)
    if device.type == 'cuda':
        fns['apply_rope triton'] = lambda: apply_rope(qkv, cos, sin, PREFIX, backend='triton')
    times = median_ms(fns, reps, device)

    qk_bytes = 2 * 2 * qkv[:, :, :2].numel() * qkv.element_size()  # q and k, read and written
    return [dict(
        model=model, heads=heads, head_dim=head_dim, batch=batch, tokens=tokens, dtype=str(dtype).split('.')[-1],
        impl=name, median_ms=round(ms, 3), gb_per_s=round(qk_bytes / ms / 1e6, 2),
        x_copy=round(ms / times['copy'], 2), speedup_vs_timm=round(times['timm'] / ms, 2),
        threads=torch.get_num_threads(), device=device.type, load_avg=round(os.getloadavg()[0], 1),
    ) for name, ms in times.items()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='batch 32, 197 tokens, 5 repetitions: ~30 s on 2 cores')
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[32, 128])
    parser.add_argument('--tokens', type=int, nargs='+', default=[197, 577])
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    parser.add_argument('--dtypes', nargs='+', default=['float32', 'bfloat16'])
    parser.add_argument('--reps', type=int, default=7)
    parser.add_argument('--threads', type=int, default=1, help='intra-op threads (see above)')
    parser.add_argument('--no-compile', action='store_true', help='skip the torch.compile rows')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--csv', type=Path, default=Path('results/bench_rope.csv'))
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.tokens, args.reps = [32], [197], 5
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    rows = []
    header = (f'{"model":6} {"B":>4} {"N":>4} {"dtype":8} {"impl":20} {"median ms":>10} {"GB/s":>7} {"x copy":>7} '
              f'{"vs timm":>8}')
    print(f'{device.type}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}\n{header}')
    for model in args.models:
        for tokens in args.tokens:
            for batch in args.batch_sizes:
                for dtype in args.dtypes:
                    for row in bench_shape(model, batch, tokens, getattr(torch, dtype), args.reps, device,
                                           not args.no_compile):
                        rows.append(row)
                        print(f'{model:6} {batch:>4} {tokens:>4} {row["dtype"]:8} {row["impl"]:20} '
                              f'{row["median_ms"]:>10.2f} {row["gb_per_s"]:>7.1f} {row["x_copy"]:>7.2f} '
                              f'{row["speedup_vs_timm"]:>8.2f}', flush=True)
    write_csv(rows, args.csv, list(rows[0]))
    print(f'wrote {args.csv}')


if __name__ == '__main__':
    main()
