"""What a bias costs in attention, and how exact the mask-free squared 2D ALiBi is in half precision.

Speed: one ViT-S attention layer (384 dims, 6 heads, batch 1, a class token) as the image grows, with
no encoding (plain SDPA, as APE or RoPE models run it), 2D ALiBi (float mask), squared 2D ALiBi as a q/k
extension (no mask), LookHere (float mask with -inf outside each head's view) and LookHere without
distance penalty (bool mask). Inference and a training step (forward + backward), median milliseconds,
and which SDPA backend PyTorch picks for those inputs on this device.

Precision: the squared ALiBi attention output in bfloat16 / float16 against the float32 dense-bias form
(random q, k, v ~ N(0, 1)), next to the dense-bias form itself in that dtype and plain attention with no
bias in that dtype (the floor half precision costs anyway).

Run from the repository root: ``python -m benchmarks.attention_masks``; writes
``results/bench_attention/{speed,precision}.csv`` and prints both tables.
"""
import argparse
import csv
import statistics
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.nn.attention import SDPBackend

from timm_pe.layers import Alibi2d, PositionalAttention
from timm_pe.layers.alibi2d_sq import Alibi2dSquared
from timm_pe.layers.lookhere import LookHere

DIM, HEADS, PREFIX, PATCH = 384, 6, 1, 16
HEAD_DIM = DIM // HEADS
ENCODINGS = {
    'none (plain SDPA)': lambda: None,
    'alibi2d (float mask)': lambda: Alibi2d(HEADS),
    'alibi2d_sq (q/k extension)': lambda: Alibi2dSquared(HEAD_DIM, HEADS),
    'lookhere (float mask)': lambda: LookHere(HEADS),
    'lookhere, no distance (bool mask)': lambda: LookHere(HEADS, global_slope=0.),
}


def median_ms(step, iters: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def sdpa_backend(attn: PositionalAttention, x: torch.Tensor, grid) -> str:
    """The backend SDPA picks for the q, k, v and mask this layer hands it."""
    seen = {}
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        seen['backend'] = SDPBackend(torch._fused_sdp_choice(q, k, v, attn_mask)).name
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    F.scaled_dot_product_attention = spy
    try:
        with torch.no_grad():
            attn(x, grid)
    finally:
        F.scaled_dot_product_attention = sdpa
    return seen['backend']


def speed(sizes, iters: int, device: torch.device):
    rows = []
    for px in sizes:
        grid = (px // PATCH, px // PATCH)
        tokens = PREFIX + grid[0] * grid[1]
        x = torch.randn(1, tokens, DIM, device=device)
        for name, make in ENCODINGS.items():
            attn = PositionalAttention(DIM, HEADS, pos_enc=make(), num_prefix_tokens=PREFIX).to(device)

            def infer():
                with torch.no_grad():
                    attn(x, grid)

            def train():
                attn(x, grid).sum().backward()

            rows.append(dict(encoding=name, img_size=px, tokens=tokens, backend=sdpa_backend(attn, x, grid),
                             infer_ms=round(median_ms(infer, iters), 2), train_ms=round(median_ms(train, iters), 2)))
            print(rows[-1], flush=True)
    return rows


def dense_sq_bias(grid, device) -> torch.Tensor:
    """(heads, N, N) float32 -m_h |r_i - r_j|^2, prefix rows and columns 0."""
    from timm_pe.layers import alibi_slopes, grid_coords
    x, y = grid_coords(grid, device)
    d2 = (x[:, None] - x[None, :]) ** 2 + (y[:, None] - y[None, :]) ** 2
    bias = -alibi_slopes(HEADS).to(device)[:, None, None] * d2
    return F.pad(bias, (PREFIX, 0, PREFIX, 0))


def precision(sizes, device: torch.device):
    torch.manual_seed(0)
    rows = []
    enc = Alibi2dSquared(HEAD_DIM, HEADS)
    for px in sizes:
        grid = (px // PATCH, px // PATCH)
        n = PREFIX + grid[0] * grid[1]
        q, k, v = torch.randn(3, 1, HEADS, n, HEAD_DIM, device=device).unbind(0)
        bias = dense_sq_bias(grid, device)
        truth = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        plain = F.scaled_dot_product_attention(q, k, v)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            qd, kd, vd = q.to(dtype), k.to(dtype), v.to(dtype)
            ext = F.scaled_dot_product_attention(*enc.extend_qkv(qd, kd, vd, grid, PREFIX), scale=1.)[..., :HEAD_DIM]
            dense = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=bias.to(dtype))
            floor = F.scaled_dot_product_attention(qd, kd, vd)

            def err(out, ref):
                diff = (out.float() - ref).abs()
                return round(diff.max().item(), 5), round(diff.mean().item(), 6)

            row = dict(img_size=px, tokens=n, dtype=str(dtype).replace('torch.', ''))
            row['sq_ext_max_err'], row['sq_ext_mean_err'] = err(ext, truth)
            row['dense_max_err'], row['dense_mean_err'] = err(dense, truth)
            row['no_bias_max_err'], row['no_bias_mean_err'] = err(floor, plain)
            rows.append(row)
            print(row, flush=True)
    return rows


def write(rows, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def markdown(rows) -> str:
    cols = list(rows[0])
    return '\n'.join(['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
                     + ['| ' + ' | '.join(str(r[c]) for c in cols) + ' |' for r in rows])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[224, 384, 512, 768])
    parser.add_argument('--precision-sizes', type=int, nargs='+', default=[224, 384, 512, 768, 1024])
    parser.add_argument('--iters', type=int, default=3)
    parser.add_argument('--threads', type=int, default=None, help='torch intra-op threads (default: torch\'s)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--output-dir', type=Path, default=Path('results/bench_attention'))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    speed_rows = speed(args.sizes, args.iters, device) if args.sizes else []
    precision_rows = precision(args.precision_sizes, device) if args.precision_sizes else []
    for name, rows in (('speed', speed_rows), ('precision', precision_rows)):
        if rows:
            write(rows, args.output_dir / f'{name}.csv')
            print(f'\n{name} ({device}):\n' + markdown(rows))


if __name__ == '__main__':
    main()
