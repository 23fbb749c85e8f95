"""Model-level cost of each position encoding: ViT-S/16 at 224 px, inference and a training step,
ours against timm's own RoPE ViT (``vit_small_patch16_rope_224``, EVA attention) and relative-position
ViT (``vit_relpos_small_patch16_224``), as throughput ratios to our APE model measured in one run.

Run from the repository root: ``python -m benchmarks.models``; writes ``results/bench_models/bench.csv``
(timm benchmark.py columns) and prints the table. It is ``timm-pe bench`` with this model list.
"""
import sys

from timm_pe.tools.cli import main

MODELS = [f'vit_small_{enc}' for enc in ('ape', 'nope', 'sincos', 'rope_axial', 'rope_mixed', 'rope_dinov3', 'alibi2d',
                                         'alibi2d_sq', 'lookhere', 'rpb')]
PEERS = ['vit_small_patch16_rope_224', 'vit_relpos_small_patch16_224']

if __name__ == '__main__':
    sys.exit(main(['bench', *MODELS, *PEERS, '--sizes', '224', '--train', '--baseline', 'vit_small_ape', '--batch-size', '16', '--iters', '5',
                   '--model-kwargs', '--output-dir', 'results/bench_models', *sys.argv[1:]]))
