"""``timm-pe study``: the small-scale resolution study (issues 6 and 14).

Tiny ViTs, one per position encoding, are trained at 64 px on Imagenette with one recipe and several
seeds, then evaluated zero-shot from 32 to 160 px. Everything is sized for a shared 2-core CPU:

- images are decoded once, kept in memory as uint8 (train at 64 px, val at the largest sweep size)
  and cached under the work dir, so later sittings skip decoding;
- augmentation (random-resized crop + horizontal flip) is one ``affine_grid``/``grid_sample`` call
  per batch on those tensors, with a generator seeded per epoch so a resumed run sees the same data;
- each run, cached per (variant, seed) in ``<work-dir>/seed<k>/<variant>/``, checkpoints every epoch
  (resumable after a kill) and writes ``result.json`` when done (skipped on the next call), plus
  ``model.safetensors`` and ``model_kwargs.json`` for ``timm-pe export``;
- the sweep shares ``timm-pe sweep``'s ``evaluate``, caches its numbers per run and writes one CSV per
  seed (``<results-dir>/seed<k>/results.csv``, timm's results format); the summary (mean, spread,
  ranking, plot) is rebuilt from every per-seed CSV in the results dir, so seeds swept in other
  sittings, or whose checkpoints are gone, still count.
"""
import argparse
import csv
import dataclasses
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from timm.utils import ParseKwargs
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from ..layers import ROPE_SCALINGS, takes_rope_scaling
from ..models.vit import VARIANTS as VIT_VARIANTS
from .common import DEFAULT_DATA_DIR, param_count_millions, parse_sizes, write_csv
from .sweep import RESULTS_COLUMNS, accuracy_table, create_models, evaluate, result_row

IMAGE_EXTENSIONS = ('.jpeg', '.jpg', '.png')
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

# variant -> (registered model, encoding-specific kwargs); all share STUDY_ARCH and the recipe
VARIANTS = {
    'ape': ('vit_tiny_ape', {}),
    'nope': ('vit_tiny_nope', {}),
    'rope_axial': ('vit_tiny_rope_axial', {}),
    'rope_mixed': ('vit_tiny_rope_mixed', {}),
    'alibi2d': ('vit_tiny_alibi2d', {}),
    'rpb': ('vit_tiny_rpb', {}),
    'rope_axial_f0.25': ('vit_tiny_rope_axial', {'rope_fraction': 0.25}),
    'rope_axial_f0.5': ('vit_tiny_rope_axial', {'rope_fraction': 0.5}),
    # Press et al.'s 8-head slope range 2^-1..2^-8 over the 4 heads (default 4 heads: 2^-2..2^-8)
    'alibi2d_spread': ('vit_tiny_alibi2d', {'alibi_slopes': 'spread'}),
    # issue 13's encodings: trained by default once their models are registered
    'lookhere': ('vit_tiny_lookhere', {}),
    'alibi2d_sq': ('vit_tiny_alibi2d_sq', {}),
    'rope_dinov3': ('vit_tiny_rope_dinov3', {}),
}
# patch 8 at 64 px: an 8x8 grid; head_dim 32, so rope_fraction 0.25 still rotates 2 pairs per axis.
# No layer scale: DeiT-III's 1e-5 start keeps the attention branches (where RoPE, ALiBi and RPB act)
# near zero for a short schedule, so every variant would train like a bag of patches (0 turns it off;
# timm.create_model drops None kwargs).
STUDY_ARCH = dict(img_size=64, patch_size=8, embed_dim=128, depth=4, num_heads=4, init_values=0.)
STUDY_SEEDS = (0, 1, 2)


def available_variants() -> List[str]:
    """Variants whose model is registered (issue 13's encodings may not be yet)."""
    import timm
    return [v for v, (model, _) in VARIANTS.items() if timm.is_model(model)]


@dataclasses.dataclass
class Recipe:
    """One recipe for every variant, a scaled-down version of the blog's (AdamW, warmup + cosine,
    label smoothing); RandAugment, mixup/cutmix and random erasing are left out at this scale."""
    epochs: int = 6
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_epochs: float = 1.
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    crop_scale_min: float = 0.35
    crop_log_ratio: float = math.log(4 / 3)
    hflip: float = 0.5
    seed: int = 0
    train_img_size: int = 64


@dataclasses.dataclass
class ImageSet:
    images: torch.Tensor  # (N, 3, S, S) uint8
    labels: torch.Tensor  # (N,) int64
    classes: List[str]


def list_image_folder(root: Path, per_class: Optional[int] = None):
    """(paths, labels, classes) of an ImageFolder; label = index of the class folder in sorted order."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise FileNotFoundError(f'no class folders under {root}')
    paths, labels = [], []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        files = files[:per_class] if per_class else files
        paths += files
        labels += [label] * len(files)
    return paths, labels, classes


def _decode(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert('RGB').resize((size, size), Image.BICUBIC)).transpose(2, 0, 1)


def _save_atomic(obj, path: Path) -> None:
    """Write beside ``path`` and rename: a kill mid-write, or another process caching the same split,
    never leaves a torn file."""
    tmp = path.with_name(f'{path.name}.{os.getpid()}.tmp')
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_split(data_dir: Path, split: str, size: int, cache_dir: Path, per_class: Optional[int] = None,
               threads: int = 2) -> ImageSet:
    """A split decoded and squashed to ``size`` x ``size`` (bicubic), cached as one tensor file."""
    cache = cache_dir / f'{split}_{size}px{f"_{per_class}per_class" if per_class else ""}.pt'
    if cache.exists():
        data = torch.load(cache)
        return ImageSet(data['images'], data['labels'], data['classes'])
    paths, labels, classes = list_image_folder(data_dir / split, per_class)
    with ThreadPoolExecutor(threads) as pool:
        arrays = list(tqdm(pool.map(lambda p: _decode(p, size), paths), total=len(paths),
                           desc=f'decode {split} @{size}px', dynamic_ncols=True))
    images = torch.from_numpy(np.stack(arrays))
    data = dict(images=images, labels=torch.tensor(labels), classes=classes)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _save_atomic(data, cache)
    return ImageSet(**data)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 1] float images to ImageNet-normalised float."""
    if images.dtype == torch.uint8:
        images = images.float().div_(255)
    return (images - MEAN) / STD


def augment(images: torch.Tensor, recipe: Recipe, generator: torch.Generator) -> torch.Tensor:
    """Random-resized crop (area in [crop_scale_min, 1], log aspect within +-crop_log_ratio) and
    horizontal flip of a uint8 batch, as one affine resampling back to the same size."""
    n = images.shape[0]
    area = torch.empty(n).uniform_(recipe.crop_scale_min, 1., generator=generator)
    ratio = torch.empty(n).uniform_(-recipe.crop_log_ratio, recipe.crop_log_ratio, generator=generator).exp()
    width, height = (area * ratio).sqrt().clamp(max=1.), (area / ratio).sqrt().clamp(max=1.)
    centre_x = (torch.rand(n, generator=generator) * 2 - 1) * (1 - width)
    centre_y = (torch.rand(n, generator=generator) * 2 - 1) * (1 - height)
    flip = torch.where(torch.rand(n, generator=generator) < recipe.hflip, -1., 1.)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width * flip, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images.float().div_(255), grid, mode='bilinear', padding_mode='reflection',
                        align_corners=False)
    return normalize(out)


def variant_model_kwargs(variant: str, num_classes: int, arch_overrides: Optional[Dict] = None) -> Dict:
    return dict(STUDY_ARCH, num_classes=num_classes, **VARIANTS[variant][1], **(arch_overrides or {}))


def create_study_model(variant: str, model_kwargs: Dict, **extra) -> nn.Module:
    import timm
    return timm.create_model(VARIANTS[variant][0], **model_kwargs, **extra)


def run_dir(work_dir: Path, variant: str, seed: int) -> Path:
    """Where the run of ``variant`` with ``seed`` lives: one folder per (variant, seed)."""
    return work_dir / f'seed{seed}' / variant


def train_variant(variant: str, train: ImageSet, recipe: Recipe, work_dir: Path,
                  arch_overrides: Optional[Dict] = None, train_missing: bool = True) -> Optional[Dict]:
    """Train one variant with ``recipe.seed`` (or resume it from its last epoch); returns its result,
    cached in result.json. With ``train_missing=False`` an unfinished run is left alone (None)."""
    from safetensors.torch import save_file
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    run = run_dir(work_dir, variant, recipe.seed)
    result_path, ckpt_path = run / 'result.json', run / 'checkpoint.pt'
    model_kwargs = variant_model_kwargs(variant, len(train.classes), arch_overrides)
    config = dict(model=VARIANTS[variant][0], model_kwargs=model_kwargs, recipe=dataclasses.asdict(recipe),
                  num_train_images=len(train.labels))
    name = f'{variant} seed {recipe.seed}'
    if result_path.exists():
        result = json.loads(result_path.read_text())
        _check_config(result['config'], config, result_path)
        print(f'[{name}] done already ({result["train_seconds"]:.0f} s), skipping')
        return result
    if not train_missing:
        print(f'[{name}] not trained (no {result_path}); --no-train leaves it out')
        return None

    torch.manual_seed(recipe.seed)
    model = create_study_model(variant, model_kwargs)
    optimizer = create_optimizer_v2(model, 'adamw', lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = len(train.labels) // recipe.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f'{len(train.labels)} training images are fewer than one batch of {recipe.batch_size}')
    scheduler = CosineLRScheduler(
        optimizer, t_initial=recipe.epochs * steps_per_epoch, lr_min=recipe.min_lr,
        warmup_t=round(recipe.warmup_epochs * steps_per_epoch), warmup_lr_init=recipe.min_lr, t_in_epochs=False)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    start_epoch, train_seconds, losses = 0, 0., []
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path)
        _check_config(ckpt['config'], config, ckpt_path)
        model.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        start_epoch, train_seconds, losses = ckpt['epoch'] + 1, ckpt['train_seconds'], ckpt['losses']
        print(f'[{name}] resuming after epoch {start_epoch} of {recipe.epochs}')
    run.mkdir(parents=True, exist_ok=True)

    model.train()
    for epoch in range(start_epoch, recipe.epochs):
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(recipe.seed * 10_000 + epoch)
        order = torch.randperm(len(train.labels), generator=generator)
        total_loss = 0.
        bar = tqdm(range(steps_per_epoch), desc=f'[{name}] epoch {epoch + 1}/{recipe.epochs}',
                   dynamic_ncols=True, mininterval=5)
        for step in bar:
            idx = order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            scheduler.step_update(epoch * steps_per_epoch + step)
            loss = loss_fn(model(augment(train.images[idx], recipe, generator)), train.labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
            bar.set_postfix(loss=f'{total_loss / (step + 1):.3f}', lr=f'{optimizer.param_groups[0]["lr"]:.2e}')
        bar.close()
        train_seconds += time.perf_counter() - started
        losses.append(round(total_loss / steps_per_epoch, 4))
        print(f'[{name}] epoch {epoch + 1}: loss {losses[-1]:.4f}, {train_seconds:.0f} s so far', flush=True)
        # after every epoch: a kill loses at most the epoch in progress
        _save_atomic(dict(model=model.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch,
                             train_seconds=train_seconds, losses=losses, config=config), ckpt_path)

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / 'model.safetensors'))
    (run / 'model_kwargs.json').write_text(json.dumps(
        dict(architecture=VARIANTS[variant][0], model_args=model_kwargs, label_names=train.classes), indent=2))
    result = dict(variant=variant, seed=recipe.seed, train_seconds=round(train_seconds, 1), epochs=recipe.epochs, losses=losses,
                  param_count=param_count_millions(model), config=config)
    result_path.write_text(json.dumps(result, indent=2))
    return result


def _check_config(saved: Dict, wanted: Dict, path: Path) -> None:
    if json.loads(json.dumps(saved)) != json.loads(json.dumps(wanted)):
        raise ValueError(f'{path} was made with another configuration; pass another --work-dir or delete '
                         f'{path.parent} to retrain.\nsaved:  {saved}\nwanted: {wanted}')


def val_batches(val: ImageSet, size: int, batch_size: int):
    """Normalised val batches resized on the fly (bicubic, antialiased) from the decoded size."""
    for start in range(0, len(val.labels), batch_size):
        images = val.images[start:start + batch_size].float().div_(255)
        if images.shape[-1] != size:
            images = F.interpolate(images, size=(size, size), mode='bicubic', antialias=True,
                                   align_corners=False).clamp_(0, 1)
        yield normalize(images), val.labels[start:start + batch_size]


def variant_takes_rope_scaling(variant: str) -> bool:
    """Whether the variant's encoding takes ``rope_scaling`` (so the sweep also tests its hooks)."""
    return takes_rope_scaling(VIT_VARIANTS[VARIANTS[variant][0].split('_', 2)[2]].get('attn_pos'))


def hook_labels(variant: str, rope_scalings: Sequence[str] = ROPE_SCALINGS) -> List[str]:
    """Result labels of a variant: its name, and ``name+hook`` per RoPE hook."""
    if not variant_takes_rope_scaling(variant):
        return [variant]
    return [variant if s == 'none' else f'{variant}+{s}' for s in ROPE_SCALINGS if s in rope_scalings]


def sweep_run(variant: str, run: Path, val: ImageSet, sizes: Sequence[int], rope_scalings: Sequence[str],
              batch_size: int) -> List[Dict]:
    """Rows in timm's results format for one run at every (hook, size) swept so far.

    The model is rebuilt from ``model.safetensors`` and ``model_kwargs.json`` by ``timm-pe sweep``'s
    loader. Numbers are cached in ``<run>/sweep.json`` by hook and size, so an interrupted sweep only
    redoes what is missing, a later call with more sizes or hooks adds to it, and a retrained run
    (folder deleted) starts afresh.
    """
    cache_path = run / 'sweep.json'
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    if cache.get('num_val_images') != len(val.labels):
        cache = dict(num_val_images=len(val.labels), metrics={})
    labels = hook_labels(variant, rope_scalings)
    if any(str(size) not in cache['metrics'].get(label, {}) for label in labels for size in sizes):
        models = create_models(VARIANTS[variant][0], run / 'model.safetensors', {},
                               rope_scalings if len(labels) > 1 else ['none'], pretrained=False, label=variant)
        cache['param_count'] = param_count_millions(models[variant])
        for size in sizes:
            todo = {label: models[label] for label in labels if str(size) not in cache['metrics'].get(label, {})}
            if not todo:
                continue
            metrics = evaluate(todo, val_batches(val, size, batch_size), total=math.ceil(len(val.labels) / batch_size),
                               desc=f'{run.parent.name}/{variant} @{size}px')
            for label in todo:
                cache['metrics'].setdefault(label, {})[str(size)] = metrics[label]
            cache_path.write_text(json.dumps(cache, indent=1))
            print(f'{run.parent.name}/{variant} @{size}px: ' + ', '.join(f'{k} {m["top1"]:.1f}' for k, m in metrics.items()),
                  flush=True)
    return [result_row(label, int(size), cache['metrics'][label][size], cache['param_count'], 1.0, 'bicubic')
            for label in hook_labels(variant) if label in cache['metrics']
            for size in sorted(cache['metrics'][label], key=int)]


def _read_csv(path: Path) -> List[Dict]:
    if not path.exists():
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def _variant_order(label: str):
    variant, _, hook = label.partition('+')
    order = list(VARIANTS)
    return (order.index(variant) if variant in order else len(order), variant, ROPE_SCALINGS.index(hook or 'none'))


def merge_seed_csv(path: Path, rows: List[Dict], variants: Sequence[str], columns: Sequence[str],
                   key: str = 'model') -> None:
    """Write ``rows`` for ``variants`` into a per-seed CSV, keeping the rows of every other variant."""
    kept = [r for r in _read_csv(path) if r[key].split('+')[0] not in variants]
    merged = sorted(kept + rows, key=lambda r: (_variant_order(r[key]), int(r.get('img_size', 0))))
    write_csv(merged, path, columns)


def train_time_row(result: Dict) -> Dict:
    return dict(variant=result['variant'], model=result['config']['model'], epochs=result['epochs'],
                train_seconds=result['train_seconds'], train_minutes=round(result['train_seconds'] / 60, 1),
                final_train_loss=result['losses'][-1], param_count=result['param_count'])


TRAIN_TIME_COLUMNS = ['variant', 'model', 'epochs', 'train_seconds', 'train_minutes', 'final_train_loss',
                      'param_count']


def write_recipe(results_dir: Path, recipe: Recipe, arch: Dict, num_val: int) -> None:
    """recipe.json: everything the runs share, machine-readable; seeds, variants and sizes are those the
    per-seed CSVs in the results dir hold (earlier calls included)."""
    csvs = sorted(results_dir.glob('seed*/results.csv'))
    seeds = sorted(int(p.parent.name[4:]) for p in csvs)
    rows = [r for p in csvs for r in _read_csv(p)]
    variants = sorted({r['model'].split('+')[0] for r in rows}, key=_variant_order)
    sizes = sorted({int(r['img_size']) for r in rows})
    recipe_doc = dict(
        recipe={k: v for k, v in dataclasses.asdict(recipe).items() if k != 'seed'}, seeds=seeds,
        seed_use=('torch.manual_seed(seed) before the model is built; the data order and augmentation of '
                  'epoch e come from a generator seeded with seed * 10000 + e'),
        architecture=arch,
        variants={v: dict(model=VARIANTS[v][0], **VARIANTS[v][1]) for v in variants if v in VARIANTS},
        data=('Imagenette v2 at 224 px; train split squashed to 64 px (PIL bicubic), val decoded at the '
              'largest sweep size and resized per test size (torch bicubic, antialiased); whole image, '
              'no crop (crop_pct 1.0)'),
        augmentation=('random-resized crop (area U[crop_scale_min, 1], log aspect U[-crop_log_ratio, '
                      'crop_log_ratio]) and horizontal flip, one bilinear affine resampling per batch'),
        optimizer='timm create_optimizer_v2 adamw (no weight decay on norms, biases, tokens, encodings)',
        schedule='timm CosineLRScheduler per step: linear warmup from min_lr, cosine to min_lr',
        loss='cross-entropy with label smoothing', sweep_sizes=list(sizes), sweep_val_images=num_val,
        sweep=('dynamic_img_size=True; APE resampled by timm, RoPE/ALiBi computed for the grid, RPB resized on '
               'the fly; RoPE variants also with rope_scaling interp and ntk, rope_train_img_size=64'))
    (results_dir / 'recipe.json').write_text(json.dumps(recipe_doc, indent=2) + '\n')


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--data-dir', type=Path, default=DEFAULT_DATA_DIR,
                        help='Imagenette root with train/ and val/ (default: ../shared/data/imagenette2-224)')
    parser.add_argument('--work-dir', type=Path, default=Path('runs/study'),
                        help='runs (seed<k>/<variant>/: checkpoints, final weights, sweep caches) and '
                             'decoded-image caches (cache/)')
    parser.add_argument('--results-dir', type=Path, default=Path('results/study'))
    parser.add_argument('--variants', nargs='+', choices=list(VARIANTS), default=None,
                        help='default: every variant whose model is registered')
    parser.add_argument('--seeds', nargs='+', type=int, default=list(STUDY_SEEDS),
                        help=f'seeds to train and sweep (default: {" ".join(map(str, STUDY_SEEDS))})')
    parser.add_argument('--epochs', type=int, default=Recipe.epochs)
    parser.add_argument('--batch-size', type=int, default=Recipe.batch_size)
    parser.add_argument('--lr', type=float, default=Recipe.lr)
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE',
                        help=f'override the shared architecture {STUDY_ARCH}')
    parser.add_argument('--train-per-class', type=int, help='use only the first N train images of each class')
    parser.add_argument('--val-per-class', type=int, help='use only the first N val images of each class')
    parser.add_argument('--sizes', type=parse_sizes, default=parse_sizes('32:160:16'),
                        help='test resolutions, start:stop:step or a,b,c (default 32:160:16); sizes swept '
                             'in earlier calls stay in the results')
    parser.add_argument('--rope-scaling', nargs='+', choices=ROPE_SCALINGS,
                        default=list(ROPE_SCALINGS), help='hooks RoPE variants are swept with')
    parser.add_argument('--eval-batch-size', type=int, default=125)
    parser.add_argument('--threads', type=int, default=2, help='torch and decoding threads')
    parser.add_argument('--no-sweep', action='store_true', help='train only')
    parser.add_argument('--no-train', action='store_true',
                        help='sweep only the runs that are finished (e.g. while another process trains the rest)')
    parser.add_argument('--summary-only', action='store_true',
                        help='only rebuild the summary from the per-seed CSVs in --results-dir')


def run_study(args: argparse.Namespace) -> int:
    from .study_summary import write_summary

    if args.summary_only:
        write_summary(args.results_dir, Recipe().train_img_size)
        print(f'summary written to {args.results_dir}')
        return 0
    torch.set_num_threads(args.threads)
    if not (args.data_dir / 'train').is_dir() or not (args.data_dir / 'val').is_dir():
        print(f'Imagenette not found: {args.data_dir} has no train/ and val/ folders; pass --data-dir '
              f'(see ../shared/data/README.md)')
        return 2
    variants = args.variants or available_variants()
    unregistered = [v for v in variants if v not in available_variants()]
    if unregistered:
        raise SystemExit(f'variants {unregistered} need models that are not registered yet '
                         f'({[VARIANTS[v][0] for v in unregistered]}); available: {available_variants()}')
    arch_overrides = args.model_kwargs
    cache_dir = args.work_dir / 'cache'
    train = load_split(args.data_dir, 'train', Recipe.train_img_size, cache_dir, args.train_per_class, args.threads)
    results: Dict[int, Dict[str, Dict]] = {}
    for seed in args.seeds:
        recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed)
        for variant in variants:
            result = train_variant(variant, train, recipe, args.work_dir, arch_overrides,
                                   train_missing=not args.no_train)
            if result is not None:
                results.setdefault(seed, {})[variant] = result
    if args.no_sweep:
        return 0
    del train
    val = load_split(args.data_dir, 'val', max(args.sizes), cache_dir, args.val_per_class, args.threads)
    for seed, done in results.items():
        rows = [row for variant in done for row in sweep_run(
            variant, run_dir(args.work_dir, variant, seed), val, args.sizes, args.rope_scaling, args.eval_batch_size)]
        seed_dir = args.results_dir / f'seed{seed}'
        merge_seed_csv(seed_dir / 'results.csv', rows, list(done), RESULTS_COLUMNS)
        merge_seed_csv(seed_dir / 'train_times.csv', [train_time_row(r) for r in done.values()], list(done),
                       TRAIN_TIME_COLUMNS, key='variant')
        print(f'seed {seed}:\n{accuracy_table(rows, "top1")}')
    write_recipe(args.results_dir, Recipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr),
                 dict(STUDY_ARCH, **arch_overrides), len(val.labels))
    write_summary(args.results_dir, Recipe.train_img_size)
    print(f'results written to {args.results_dir}')
    return 0
