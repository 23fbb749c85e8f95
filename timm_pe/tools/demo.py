"""``timm-pe demo``: the main job, a few minutes on a CPU with no network.

1. ``timm-pe bench`` over every ViT encoding (and Swin with RPB against RoPE) as the token count grows;
2. where Imagenette is present, a smoke run of ``timm-pe study``: three encodings trained for one short
   epoch at 64 px, then swept from 32 to 128 px. The real study's numbers are in ``results/study``.
"""
import argparse
from pathlib import Path

from .cli import main as cli_main
from ..models.vit import VARIANTS as VIT_VARIANTS
from .common import DEFAULT_DATA_DIR


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--output-dir', type=Path, default=Path('out/demo'))
    parser.add_argument('--data-dir', type=Path, default=DEFAULT_DATA_DIR,
                        help='Imagenette root for the smoke study (skipped where absent)')


def run_demo(args: argparse.Namespace) -> int:
    vits = [f'vit_tiny_{enc}' for enc in VIT_VARIANTS if not enc.endswith('_ape')]
    print('== bench: ViT-Ti/16 (depth 4) with each encoding, ratio to APE as the token count grows ==')
    cli_main(['bench', *vits, '--sizes', '96,192,288,384', '--batch-size', '4', '--iters', '3',
              '--output-dir', str(args.output_dir / 'bench_vit')])
    print('\n== bench: Swin-T (depths 2,2,2,2) with RPB, RoPE-Mixed and 2D ALiBi, ratio to RPB ==')
    cli_main(['bench', 'swin_tiny_rpb', 'swin_tiny_rope_mixed', 'swin_tiny_alibi2d', '--sizes', '224,448',
              '--baseline', 'swin_tiny_rpb', '--batch-size', '2', '--iters', '3',
              '--output-dir', str(args.output_dir / 'bench_swin')])
    if not (args.data_dir / 'val').is_dir():
        print(f'\nImagenette not found at {args.data_dir}: skipping the smoke study (see ../shared/data/README.md)')
        return 0
    print('\n== smoke study: 3 encodings, 1 epoch on 100 images per class at 64 px, swept 32-128 px ==')
    study_dir = args.output_dir / 'study'
    return cli_main(['study', '--data-dir', str(args.data_dir), '--variants', 'ape', 'rope_mixed', 'alibi2d',
                     '--epochs', '1', '--train-per-class', '100', '--val-per-class', '20',
                     '--sizes', '32:128:32', '--rope-scaling', 'none',
                     '--work-dir', str(study_dir), '--results-dir', str(study_dir)])
