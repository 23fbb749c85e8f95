"""``timm-pe export`` and ``timm-pe push``: the command line over :mod:`timm_pe.publish`."""
import argparse
from pathlib import Path

import timm
import torch
from timm.layers import to_2tuple
from timm.utils import ParseKwargs

from ..models._pretrained import HUB_ORG
from ..publish import DEFAULT_TEMPLATE, export, push, read_metrics


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('model', help="registered name and tag (e.g. vit_small_rope_mixed.in100) or 'hf-hub:<repo>'")
    parser.add_argument('out', type=Path, help='folder to write')
    parser.add_argument('--checkpoint', type=Path,
                        help='weights to export (.safetensors, or a train.py checkpoint); default: the tag\'s weights')
    parser.add_argument('--num-classes', type=int, help='classes of the checkpoint, where not those of the tag')
    parser.add_argument('--img-size', type=int, help='size to build at: with --checkpoint the size it was trained at, '
                        'else the tag\'s weights are resampled to it')
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                        help='architecture overrides used for the checkpoint, e.g. depth=6')
    parser.add_argument('--metrics', type=Path, help='results CSV (img_size, top1[, model]) for the card\'s table')
    parser.add_argument('--metrics-model', help='keep only metrics rows whose model column contains this')
    parser.add_argument('--recipe', type=Path, help='training config (e.g. recipes/*.yaml) shown in the card')
    parser.add_argument('--repo-id', help=f'Hub repo the card points to (default: {HUB_ORG}/<model>)')
    parser.add_argument('--template', type=Path, default=DEFAULT_TEMPLATE, help='model card template')
    parser.add_argument('--card-only', action='store_true', help='write README.md only, without weights')
    parser.add_argument('--random-init', action='store_true',
                        help='export the model as built, with freshly initialised (untrained) weights, e.g. for an '
                             'architecture without weights yet; the card says they are untrained')


def _create_for_export(args) -> torch.nn.Module:
    kwargs = dict(args.model_kwargs)
    if args.img_size is not None:
        kwargs['img_size'] = args.img_size
    if args.num_classes is not None:
        kwargs['num_classes'] = args.num_classes
    if args.card_only:
        with torch.device('meta'):
            return timm.create_model(args.model, **kwargs)
    if args.random_init:
        if args.checkpoint is not None:
            raise SystemExit('--random-init exports untrained weights; it cannot be combined with --checkpoint')
        return timm.create_model(args.model, **kwargs)
    overlay = None
    if args.checkpoint is not None:
        # a checkpoint is recorded as trained at the size it is exported at (RoPE's rope_train_img_size), with its head
        overlay = dict(file=str(args.checkpoint))
        if 'img_size' in kwargs:
            overlay['input_size'] = (kwargs.get('in_chans', 3), *to_2tuple(kwargs['img_size']))
        if args.num_classes is not None:
            overlay.update(num_classes=args.num_classes, label_names=None, label_descriptions=None)
    return timm.create_model(args.model, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)


def run_export(args: argparse.Namespace) -> None:
    model = _create_for_export(args).eval()
    name = args.model
    repo_id = args.repo_id or (name.split(':', 1)[1] if name.startswith('hf-hub:') else f'{HUB_ORG}/{name}')
    recipe = f'```yaml\n{args.recipe.read_text().strip()}\n```' if args.recipe else None
    metrics = read_metrics(args.metrics, args.metrics_model) if args.metrics else ()
    out = export(model, args.out, model.pretrained_cfg['architecture'] if name.startswith('hf-hub:') else name,
                 repo_id, metrics, recipe, args.template, args.card_only, trained=not args.random_init)
    print(f'Wrote {", ".join(sorted(p.name for p in out.iterdir()))} to {out}')


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('folder', type=Path, help='folder written by `timm-pe export`')
    parser.add_argument('repo_id', help=f'Hub repo, e.g. {HUB_ORG}/vit_small_rope_mixed.in100')
    parser.add_argument('--private', action='store_true')
    parser.add_argument('--revision', help='branch to push to')
    parser.add_argument('--create-pr', action='store_true', help='open a pull request instead of committing')
    parser.add_argument('--commit-message', default='Add timm-pe weights')


def run_push(args: argparse.Namespace) -> None:
    info = push(args.folder, args.repo_id, private=args.private, revision=args.revision, create_pr=args.create_pr,
                commit_message=args.commit_message)
    print(f'Uploaded {args.folder} to {getattr(info, "commit_url", args.repo_id)}')
