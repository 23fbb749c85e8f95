"""``timm-pe bench``: inference (and ``--train`` training-step) throughput, latency and memory of
models over resolutions, with each model's ratio to a baseline: the APE model of the same size, or
``--baseline``.

The CSV follows timm's ``benchmark.py`` (``infer_samples_per_sec``, ``infer_step_time`` in ms,
``infer_batch_size``, ``infer_img_size``, ``param_count`` in millions, and ``train_*`` alike), plus
``*_tokens``, memory, the ``baseline`` model and ``*_samples_per_sec_vs_<encoding>``, the ratio named after
the baseline's encoding (``_vs_ape``, ``_vs_rpb``; ``_vs_baseline`` where models have different ones).
Each model is built at each size (``img_size``), the way it would be deployed there, so APE and RPB are
resampled once, not per step. The models of one size are built together and timed round-robin, one step
of each per round in a shuffled order, so a load change on a busy machine hits them all alike; step time
is the median over the rounds. glibc's malloc is told to keep freed memory (``--allocator``): otherwise a
step pays page faults for memory the model before it freed.

Memory: ``*_peak_mem_mb`` is the CUDA allocator's peak over one step (CUDA only: CPU has no allocator
statistics, and sampling resident memory missed short-lived blocks); ``train_saved_mb`` is what
autograd keeps for the backward pass (activations, not parameters), exact on any device: it is where
an attention bias or rotation tables add their cost.
"""
import argparse
import contextlib
import re
import statistics
from pathlib import Path
from typing import Callable, ContextManager, Dict, Iterable, List, Optional

import torch
from torch import nn
from tqdm import tqdm

from .common import (add_model_arguments, add_runtime_arguments, autocast, default_kwargs, input_dtype, model_names,
                     param_count_millions, parse_sizes, prepare_model, pyplot, save_figure, write_csv)
from .timing import interleaved_times, keep_freed_memory, model_steps

DEFAULT_MODELS = ['vit_tiny_ape', 'vit_tiny_nope', 'vit_tiny_rope_axial', 'vit_tiny_rope_mixed', 'vit_tiny_alibi2d',
                  'vit_tiny_rpb']
# a shallower model by default keeps a CPU run short; each family says depth its own way
DEFAULT_KWARGS = {'vit': dict(depth=4), 'swin': dict(depths=(2, 2, 2, 2))}
SIZE_PATTERN = re.compile(r'^(?P<family>[a-z0-9]+)_(?P<size>tiny|small|base|large)_')


def ape_baseline(model_name: str) -> Optional[str]:
    """``vit_small_rope_mixed`` -> ``vit_small_ape``: the same family and size with learned APE, if registered."""
    import timm
    match = SIZE_PATTERN.match(model_name)
    name = f'{match["family"]}_{match["size"]}_ape' if match else None
    return name if name and timm.is_model(name) else None


def baseline_label(baselines: Iterable[Optional[str]]) -> str:
    """What the ratio columns are named after: the baselines' common encoding (``swin_tiny_rpb`` -> 'rpb'),
    else 'baseline'."""
    labels = set()
    for name in filter(None, baselines):
        match = SIZE_PATTERN.match(name)
        labels.add(name[match.end():] if match else None)
    return labels.pop() if len(labels) == 1 and None not in labels else 'baseline'


def cuda_peak_memory_mb(step: Callable[[], None], device: torch.device) -> Optional[float]:
    """Peak CUDA memory one ``step`` adds on top of what is allocated before it (None off CUDA)."""
    if device.type != 'cuda':
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20


def saved_for_backward_mb(model: nn.Module, forward: Callable[[], torch.Tensor]) -> float:
    """MB of distinct tensor storage autograd saves for the backward of ``forward()``, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(saved.values()) / 2 ** 20


def num_tokens(model: nn.Module) -> Optional[int]:
    patch_embed = getattr(model, 'patch_embed', None)
    if patch_embed is None or not hasattr(patch_embed, 'num_patches'):
        return None
    return patch_embed.num_patches + getattr(model, 'num_prefix_tokens', 0)


def bench_size(models: Dict[str, nn.Module], img_size: int, batch_size: int, device: torch.device, warmup: int,
               iters: int, train: bool, dtype: torch.dtype = torch.float32,
               autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> Dict[str, Dict[str, object]]:
    """timm benchmark.py-style columns per model at one size: inference, then the training step, each phase
    timed round-robin over the models (``interleaved_times``)."""
    images = torch.randn(batch_size, 3, img_size, img_size, device=device, dtype=dtype)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == 'cuda' else (lambda: None)
    rows = {name: dict(infer_img_size=img_size, infer_batch_size=batch_size, infer_tokens=num_tokens(model))
            for name, model in models.items()}
    for phase in ('infer', 'train') if train else ('infer',):
        steps = {name: model_steps(model, images, phase == 'train', autocast) for name, model in models.items()}
        times = interleaved_times(steps, iters, warmup, sync)
        for name, row in rows.items():
            step_ms = 1e3 * statistics.median(times[name])
            row.update({f'{phase}_img_size': img_size, f'{phase}_batch_size': batch_size,
                        f'{phase}_tokens': row['infer_tokens'],
                        f'{phase}_samples_per_sec': round(1e3 * batch_size / step_ms, 2),
                        f'{phase}_step_time': round(step_ms, 3),
                        f'{phase}_peak_mem_mb': _round(cuda_peak_memory_mb(steps[name], device))})
    if train:
        for name, model in models.items():
            def forward():
                with autocast():
                    return model(images)
            rows[name]['train_saved_mb'] = _round(saved_for_backward_mb(model, forward))
    return rows


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 1)


def add_ratios(rows: List[Dict[str, object]], baselines: Dict[str, Optional[str]], label: str) -> None:
    """``baseline`` and ``*_samples_per_sec_vs_<label>``: throughput over the baseline's at the same size
    (1.0 = as fast)."""
    by_key = {(r['model'], r['infer_img_size']): r for r in rows}
    for row in rows:
        row['baseline'] = baselines.get(row['model'])
        base = by_key.get((row['baseline'], row['infer_img_size']))
        for phase in ('infer', 'train'):
            key = f'{phase}_samples_per_sec'
            if key in row:
                row[f'{key}_vs_{label}'] = round(row[key] / base[key], 3) if base and key in base else None


def plot_bench(rows: List[Dict[str, object]], path: Path, phase: str = 'infer', label: str = 'ape') -> bool:
    """Throughput and ratio to the baseline against the token count, one line per model. False if not plotted."""
    plt = pyplot()
    if plt is None:
        return False
    models = list(dict.fromkeys(r['model'] for r in rows))
    x_key = f'{phase}_tokens' if all(r.get(f'{phase}_tokens') for r in rows) else f'{phase}_img_size'
    fig, (ax_speed, ax_ratio) = plt.subplots(1, 2, figsize=(12, 4.8))
    for model in models:
        points = sorted((r[x_key], r[f'{phase}_samples_per_sec'], r.get(f'{phase}_samples_per_sec_vs_{label}'))
                        for r in rows if r['model'] == model)
        ax_speed.plot([p[0] for p in points], [p[1] for p in points], marker='o', markersize=3, label=model)
        if all(p[2] is not None for p in points):
            ax_ratio.plot([p[0] for p in points], [p[2] for p in points], marker='o', markersize=3, label=model)
    ax_speed.set_yscale('log')
    ax_speed.set_ylabel(f'{phase} samples / s')
    ax_ratio.axhline(1., color='grey', linewidth=0.8)
    ax_ratio.set_ylabel(f'throughput / {label} throughput')
    for ax in (ax_speed, ax_ratio):
        ax.set_xlabel('tokens' if x_key.endswith('tokens') else 'image size (px)')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f'{phase} throughput over token count')
    save_figure(plt, fig, path)
    return True


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, required=False, default=DEFAULT_MODELS,
                        kwargs_help='applied to every model (default: depth=4 for ViTs, depths=(2,2,2,2) for Swin; '
                                    'a bare --model-kwargs builds the models as registered)')
    parser.set_defaults(model_kwargs=None)  # None: not given, so the shallow defaults apply
    parser.add_argument('--sizes', type=parse_sizes, default=parse_sizes('64:384:64'),
                        help='image sizes, start:stop:step or a,b,c (default 64:384:64: 16 to 576 patches at /16)')
    parser.add_argument('-b', '--batch-size', type=int, default=8)
    parser.add_argument('--train', action='store_true', help='also time a training step (SGD, cross-entropy)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps before timing')
    parser.add_argument('--iters', type=int, default=5, help='timed rounds, one step of each model per round '
                                                             '(median reported)')
    parser.add_argument('--allocator', default='steady', choices=['steady', 'system'],
                        help="steady: glibc's malloc keeps freed memory, so no step pays page faults for memory "
                             "another model freed; system: as it is")
    parser.add_argument('--baseline', help='the model every ratio is taken to (default: the APE model of the same '
                                           'family and size, e.g. vit_small_ape for vit_small_rope_mixed)')
    add_runtime_arguments(parser)
    parser.add_argument('--output-dir', type=Path, default=Path('out/bench'),
                        help='where bench.csv and bench_infer.png (bench_train.png) go')
    parser.add_argument('--results-file', type=Path, help='CSV path (default: OUTPUT_DIR/bench.csv)')


def run_bench(args: argparse.Namespace) -> int:
    import timm

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = model_names(args)
    baselines = {name: args.baseline or ape_baseline(name) for name in names}
    models = list(dict.fromkeys([b for b in baselines.values() if b] + names))
    if args.allocator == 'steady' and not keep_freed_memory():
        print("malloc has no mallopt here: the allocator is left as it is (--allocator system)")
    rows = []
    for size in tqdm(args.sizes, desc='bench (sizes)', dynamic_ncols=True):
        built = {name: timm.create_model(name, img_size=size, **(
            default_kwargs(name, DEFAULT_KWARGS) if args.model_kwargs is None else args.model_kwargs))
            for name in models}
        params = {name: param_count_millions(model) for name, model in built.items()}
        timed = bench_size({name: prepare_model(model, args) for name, model in built.items()}, size,
                           args.batch_size, device, args.warmup, args.iters, args.train, input_dtype(args),
                           lambda: autocast(args))
        rows += [dict(model=name, **row, param_count=params[name]) for name, row in timed.items()]
        del built
    baselines.update({b: b for b in baselines.values() if b})
    label = baseline_label(baselines.values())
    add_ratios(rows, baselines, label)
    rows.sort(key=lambda r: (models.index(r['model']), r['infer_img_size']))
    columns = list(dict.fromkeys(['model'] + [k for r in rows for k in r if k.startswith('infer')] +
                                 ['param_count'] + [k for r in rows for k in r if k.startswith('train')] +
                                 ['baseline']))
    results_file = args.results_file or args.output_dir / 'bench.csv'
    write_csv(rows, results_file, columns)
    for phase in ['infer', 'train'] if args.train else ['infer']:
        if plot_bench(rows, args.output_dir / f'bench_{phase}.png', phase, label):
            print(f'wrote {args.output_dir / f"bench_{phase}.png"}')
    show = ['model', 'infer_img_size', 'infer_tokens', 'infer_samples_per_sec', 'infer_step_time',
            f'infer_samples_per_sec_vs_{label}']
    if device.type == 'cuda':
        show.insert(-1, 'infer_peak_mem_mb')
    if args.train:
        show += ['train_samples_per_sec', 'train_saved_mb', f'train_samples_per_sec_vs_{label}']
    widths = {k: max(len(k), *(len(str(r.get(k))) for r in rows)) for k in show}
    print('  '.join(k.rjust(widths[k]) for k in show))
    for row in rows:
        print('  '.join(str(row.get(k)).rjust(widths[k]) for k in show))
    print(f'wrote {results_file}')
    return 0
