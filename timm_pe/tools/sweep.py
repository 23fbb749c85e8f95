"""``timm-pe sweep``: top-1/top-5 of models on an ImageFolder over a list of resolutions.

Every model is built with ``dynamic_img_size=True`` at its training resolution, so a test size only
changes the patch grid: APE is resampled by timm, RoPE and ALiBi are computed for the grid, RPB tables
are resized on the fly. RoPE models are also evaluated with each ``--rope-scaling`` hook.
The evaluation, CSV and plot helpers here are shared with ``timm-pe study``.
"""
import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import ContextManager, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from tqdm import tqdm

from ..layers import ROPE_SCALINGS
from ..layers.rotary import TRAIN_GRID_BUFFER
from .common import (add_model_arguments, add_runtime_arguments, autocast, input_dtype, is_rope_model, model_names,
                     param_count_millions, parse_sizes, prepare_model, pyplot, save_figure, write_csv)

RESULTS_COLUMNS = ['model', 'img_size', 'top1', 'top1_err', 'top5', 'top5_err', 'param_count', 'crop_pct',
                   'interpolation']


@torch.no_grad()  # not inference_mode: grid tables cached here may be reused by a later training step
def evaluate(
        models: Mapping[str, nn.Module],
        batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
        total: Optional[int] = None,
        desc: str = 'eval',
        device: Union[str, torch.device] = 'cpu',
        dtype: torch.dtype = torch.float32,
        autocast: Optional[ContextManager] = None,
) -> Dict[str, Dict[str, float]]:
    """Top-1/top-5 (%) of every model over one pass of ``batches``: each batch is decoded and resized
    once and shared by all models, which is where a multi-model sweep spends less time."""
    counts = {name: [0, 0] for name in models}
    seen = 0
    for images, targets in tqdm(batches, total=total, desc=desc, leave=False, dynamic_ncols=True):
        images, targets = images.to(device, dtype), targets.to(device)
        seen += targets.numel()
        for name, model in models.items():
            with autocast or contextlib.nullcontext():
                logits = model(images).float()
            top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
            hits = top.eq(targets[:, None])
            counts[name][0] += hits[:, 0].sum().item()
            counts[name][1] += hits.any(dim=-1).sum().item()
    if not seen:
        raise ValueError('evaluate() got no images')
    return {name: {'top1': 100. * c1 / seen, 'top5': 100. * c5 / seen, 'count': seen}
            for name, (c1, c5) in counts.items()}


def result_row(model: str, img_size: int, metrics: Mapping[str, float], param_count: float,
               crop_pct: float, interpolation: str) -> Dict[str, object]:
    """One row in timm's results-file format (validate.py / results/*.csv)."""
    top1, top5 = metrics['top1'], metrics['top5']
    return dict(model=model, img_size=img_size, top1=round(top1, 3), top1_err=round(100 - top1, 3),
                top5=round(top5, 3), top5_err=round(100 - top5, 3), param_count=param_count,
                crop_pct=crop_pct, interpolation=interpolation)


def accuracy_table(rows: Sequence[Mapping[str, object]], metric: str = 'top1', markdown: bool = False,
                   models: Optional[Sequence[str]] = None) -> str:
    """Models down, resolutions across, ``metric`` in the cells."""
    models = list(models or dict.fromkeys(r['model'] for r in rows))
    sizes = sorted({int(r['img_size']) for r in rows})
    cell = {(r['model'], int(r['img_size'])): float(r[metric]) for r in rows}
    header = ['model'] + [str(s) for s in sizes]
    lines = [[m] + [f'{cell[m, s]:.2f}' if (m, s) in cell else '-' for s in sizes] for m in models]
    if markdown:
        out = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
        out += ['| ' + ' | '.join(line) + ' |' for line in lines]
        return '\n'.join(out)
    widths = [max(len(x[i]) for x in [header] + lines) for i in range(len(header))]
    return '\n'.join('  '.join(x[i].rjust(widths[i]) if i else x[i].ljust(widths[i]) for i in range(len(x)))
                     for x in [header] + lines)


def plot_accuracy(rows: Sequence[Mapping[str, object]], path: Path, title: str, metric: str = 'top1',
                  train_size: Optional[int] = None) -> bool:
    """One line per model of ``metric`` against resolution. A model named ``base+hook`` shares the
    colour of ``base`` and gets a dashed (interp) or dotted (other hooks) line. False if not plotted."""
    plt = pyplot()
    if plt is None:
        return False
    models = list(dict.fromkeys(r['model'] for r in rows))
    bases = list(dict.fromkeys(m.split('+')[0] for m in models))
    colours = plt.get_cmap('tab10' if len(bases) <= 10 else 'tab20')
    fig, ax = plt.subplots(figsize=(10.5, 5.5))
    for model in models:
        base, _, hook = model.partition('+')
        points = sorted((int(r['img_size']), float(r[metric])) for r in rows if r['model'] == model)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker='o', markersize=3, label=model,
                color=colours(bases.index(base) % colours.N), linestyle={'': '-', 'interp': '--'}.get(hook, ':'))
    if train_size:
        ax.axvline(train_size, color='grey', linewidth=0.8, linestyle='-.', label=f'train {train_size}px')
    ax.set_xlabel('test resolution (px)')
    ax.set_ylabel(f'{metric} (%)')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc='center left', bbox_to_anchor=(1.01, 0.5))
    save_figure(plt, fig, path)
    return True


def checkpoint_model_args(checkpoint: Path) -> Dict[str, object]:
    """Model kwargs saved beside a checkpoint (``model_kwargs.json`` from ``timm-pe study`` or a Hub
    ``config.json``), so a trained study variant is rebuilt with its own architecture."""
    for name in ('model_kwargs.json', 'config.json'):
        path = checkpoint.parent / name
        if path.is_file():
            return dict(json.loads(path.read_text()).get('model_args', {}))
    return {}


def create_models(name: str, checkpoint: Optional[Path], model_kwargs: Dict, rope_scalings: Sequence[str],
                  pretrained: bool, label: str) -> Dict[str, nn.Module]:
    """The model at every ``rope_scaling`` hook (RoPE models only), keyed by label or ``label+hook``.

    Built with ``dynamic_img_size=True`` where the model takes it (timm CNNs do not, and need nothing).
    The hooks scale from the training grid the checkpoint records; a checkpoint saved before timm-pe
    recorded it needs the training size from the kwargs (``img_size``, as in a ``model_kwargs.json`` beside
    it, or ``rope_train_img_size``), else the hooks are refused: they would scale from a guess.
    """
    import timm
    from timm.models import load_state_dict

    kwargs = dict(checkpoint_model_args(checkpoint) if checkpoint else {}, **model_kwargs)
    pretrained = pretrained or name.startswith('hf-hub:')

    def build(**extra) -> nn.Module:
        try:
            return timm.create_model(name, pretrained=pretrained, **dict(kwargs, dynamic_img_size=True, **extra))
        except TypeError as e:
            if 'dynamic_img_size' not in str(e):
                raise
            return timm.create_model(name, pretrained=pretrained, **dict(kwargs, **extra))

    base = build()
    records_grid = True
    if checkpoint:
        # the model family's own filter resamples APE / renames old keys; RPB modules resize their tables
        state_dict = load_state_dict(str(checkpoint))
        filter_fn = getattr(sys.modules[type(base).__module__], 'checkpoint_filter_fn', None)
        if filter_fn is not None:
            state_dict = filter_fn(state_dict, base)
        records_grid = any(k.endswith(f'.{TRAIN_GRID_BUFFER}') for k in state_dict)
        base.load_state_dict(state_dict)
    if not is_rope_model(base):
        return {label: base.eval()}
    hooks = [s for s in rope_scalings if s != 'none']
    if hooks and not (records_grid or 'img_size' in kwargs or 'rope_train_img_size' in kwargs):
        raise ValueError(
            f'{checkpoint} does not record the grid its RoPE layers were trained at (saved before timm-pe kept it '
            f'with the weights), so rope_scaling {hooks} would scale from a guess: give the training size with '
            f'--model-kwargs img_size=SIZE (or rope_train_img_size=SIZE), or evaluate with --rope-scaling none')
    train_size = kwargs.get('rope_train_img_size') or base.patch_embed.img_size
    models = {}
    for scaling in rope_scalings:
        model = base if scaling == 'none' else build(rope_scaling=scaling, rope_train_img_size=train_size)
        if model is not base:
            model.load_state_dict(base.state_dict())
        models[label if scaling == 'none' else f'{label}+{scaling}'] = model.eval()
    return models


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, kwargs_help='e.g. num_classes=10 img_size=64 class_token=False')
    parser.add_argument('--data-dir', type=Path, required=True, help='ImageFolder root (or its parent, with --split)')
    parser.add_argument('--split', default='val', help='sub-folder of --data-dir to use where it exists')
    parser.add_argument('--checkpoint', type=Path, action='append', default=[],
                        help='weights for the model at the same position (repeat per model); kwargs in a '
                             'model_kwargs.json or config.json beside it are used')
    parser.add_argument('--pretrained', action='store_true', help='load the registered pretrained weights')
    parser.add_argument('--sizes', type=parse_sizes, default=parse_sizes('96:288:32'),
                        help='test resolutions: start:stop:step or a,b,c (default 96:288:32)')
    parser.add_argument('--rope-scaling', nargs='+', choices=ROPE_SCALINGS, default=['none'],
                        help='RoPE hooks to evaluate each RoPE model with (default: none)')
    parser.add_argument('--crop-pct', type=float, help="centre-crop fraction (default: the model's)")
    parser.add_argument('--interpolation', help="resize interpolation (default: the model's)")
    parser.add_argument('-b', '--batch-size', type=int, default=64)
    parser.add_argument('-j', '--workers', type=int, default=2, help='data-loading processes')
    add_runtime_arguments(parser)
    parser.add_argument('--output-dir', type=Path, default=Path('out/sweep'),
                        help='where results.csv and top1_vs_resolution.png go')
    parser.add_argument('--results-file', type=Path, help='CSV path (default: OUTPUT_DIR/results.csv)')


def run_sweep(args: argparse.Namespace) -> int:
    from timm.data import create_dataset, create_loader, resolve_data_config

    torch.set_num_threads(args.threads)
    names = model_names(args)
    if args.checkpoint and len(args.checkpoint) != len(names):
        raise SystemExit(f'got {len(args.checkpoint)} --checkpoint for {len(names)} models: give one per model')
    if not args.data_dir.is_dir():
        raise SystemExit(f'--data-dir {args.data_dir} is not a folder')
    model_kwargs = args.model_kwargs
    models: Dict[str, nn.Module] = {}
    for i, name in enumerate(names):
        checkpoint = args.checkpoint[i] if args.checkpoint else None
        label = name if checkpoint is None else f'{name}({checkpoint.parent.name}/{checkpoint.stem})'
        models.update(create_models(name, checkpoint, model_kwargs, args.rope_scaling, args.pretrained, label))
    models = {label: prepare_model(model, args) for label, model in models.items()}
    dataset = create_dataset('', root=str(args.data_dir), split=args.split)
    rows = []
    for size in args.sizes:
        # models that normalise and resize alike share one pass over the data
        groups: Dict[Tuple, Dict[str, nn.Module]] = {}
        for label, model in models.items():
            cfg = resolve_data_config(dict(input_size=(3, size, size), crop_pct=args.crop_pct,
                                           interpolation=args.interpolation), model=model)
            key = (cfg['interpolation'], cfg['crop_pct'], tuple(cfg['mean']), tuple(cfg['std']))
            groups.setdefault(key, {})[label] = model
        for (interpolation, crop_pct, mean, std), group in groups.items():
            loader = create_loader(dataset, input_size=(3, size, size), batch_size=args.batch_size,
                                   is_training=False, use_prefetcher=False, interpolation=interpolation,
                                   mean=mean, std=std, crop_pct=crop_pct, num_workers=args.workers)
            metrics = evaluate(group, loader, total=len(loader), desc=f'@{size}px', device=args.device,
                               dtype=input_dtype(args), autocast=autocast(args))
            rows += [result_row(label, size, metrics[label], param_count_millions(group[label]), crop_pct,
                                interpolation) for label in group]
    order = {label: i for i, label in enumerate(models)}
    rows.sort(key=lambda r: (order[r['model']], r['img_size']))
    print(accuracy_table(rows, 'top1'))
    results_file = args.results_file or args.output_dir / 'results.csv'
    write_csv(rows, results_file, RESULTS_COLUMNS)
    print(f'wrote {results_file}')
    if plot_accuracy(rows, args.output_dir / 'top1_vs_resolution.png', title=f'top-1 vs resolution on {args.data_dir}'):
        print(f'wrote {args.output_dir / "top1_vs_resolution.png"}')
    return 0
