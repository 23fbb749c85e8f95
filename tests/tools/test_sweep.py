"""timm-pe sweep: resolution parsing, the shared evaluation, and the CLI on small ImageFolders."""
import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import timm_pe  # noqa: F401
from timm_pe.tools.cli import main
from timm_pe.tools.sweep import RESULTS_COLUMNS, evaluate, parse_sizes

IMAGENETTE_VAL = Path(__file__).resolve().parents[3] / 'shared' / 'data' / 'imagenette2-224' / 'val'
TINY = ['embed_dim=32', 'depth=1', 'num_heads=2', 'patch_size=8', 'img_size=32']


def make_image_folder(root: Path, per_class, size: int = 40, seed: int = 0) -> Path:
    """Random RGB PNGs in ``root/val/class<i>/``, ``per_class[i]`` of them."""
    rng = np.random.default_rng(seed)
    for c, count in enumerate(per_class):
        folder = root / 'val' / f'class{c}'
        folder.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f'{i}.png')
    return root


def read_csv(path: Path):
    with open(path) as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_parse_sizes():
    assert parse_sizes('32:160:16') == [32, 48, 64, 80, 96, 112, 128, 144, 160]
    assert parse_sizes('96,128,224') == [96, 128, 224]
    with pytest.raises(Exception):
        parse_sizes('160:32:16')


class ConstantLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def test_evaluate_top1_top5():
    # 10 classes, targets 0..9 twice; class scores fall with the index, so top-1 hits class 0 only
    # and top-5 hits classes 0..4
    logits = [10. - i for i in range(10)]
    batches = [(torch.zeros(4, 3, 8, 8), torch.tensor(t)) for t in ([0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1],
                                                                    [2, 3, 4, 5], [6, 7, 8, 9])]
    result = evaluate({'m': ConstantLogits(logits)}, batches)['m']
    assert result['count'] == 20
    assert result['top1'] == pytest.approx(10.)
    assert result['top5'] == pytest.approx(50.)


def test_sweep_cli_csv_and_plot(tmp_path):
    data = make_image_folder(tmp_path / 'data', [3, 3])
    out = tmp_path / 'out'
    assert main(['sweep', 'vit_tiny_ape', 'vit_tiny_rope_axial', 'vit_tiny_rpb', '--data-dir', str(data),
                 '--sizes', '32,48', '--rope-scaling', 'none', 'interp', '--model-kwargs', *TINY, 'num_classes=2',
                 '--workers', '0', '--threads', '1', '--output-dir', str(out)]) == 0
    columns, rows = read_csv(out / 'results.csv')
    assert columns == RESULTS_COLUMNS
    expected = {(m, s) for m in ['vit_tiny_ape', 'vit_tiny_rope_axial', 'vit_tiny_rope_axial+interp', 'vit_tiny_rpb']
                for s in ('32', '48')}
    assert {(r['model'], r['img_size']) for r in rows} == expected
    for row in rows:
        assert float(row['top1']) in (0., 50., 100.)  # 6 images, 3 per class, 2 classes: multiples of 1/6
        assert float(row['top1']) + float(row['top1_err']) == pytest.approx(100.)
        assert float(row['top5']) == 100.  # 2 classes: always within the top 5
    if importlib.util.find_spec('matplotlib'):  # plots are an extra; the CSV is not
        assert (out / 'top1_vs_resolution.png').stat().st_size > 1000


def test_sweep_swin_like_a_vit(tmp_path):
    """Swin is built with dynamic_img_size=True too: each size gets its own windows (image / 8 with two stages)."""
    data = make_image_folder(tmp_path / 'data', [2, 2], size=48)
    out = tmp_path / 'out'
    swin = ['embed_dim=32', 'depths=(2,2)', 'num_heads=(1,2)', 'img_size=64', 'num_classes=2']
    assert main(['sweep', 'swin_tiny_rpb', 'swin_tiny_rope_mixed', '--data-dir', str(data), '--sizes', '64,96',
                 '--rope-scaling', 'none', '--model-kwargs', *swin, '--workers', '0', '--threads', '1',
                 '--output-dir', str(out)]) == 0
    _, rows = read_csv(out / 'results.csv')
    assert {(r['model'], r['img_size']) for r in rows} == {(m, s) for m in ['swin_tiny_rpb', 'swin_tiny_rope_mixed']
                                                           for s in ('64', '96')}
    assert all(float(r['top1']) in (0., 25., 50., 75., 100.) for r in rows)


def test_sweep_checkpoint_with_saved_kwargs(tmp_path):
    """Weights and model kwargs saved the way ``timm-pe study`` saves them are picked up by --checkpoint."""
    import timm
    from safetensors.torch import save_file
    data = make_image_folder(tmp_path / 'data', [3, 1])
    model_args = dict(embed_dim=32, depth=1, num_heads=2, patch_size=8, img_size=32, num_classes=2)
    model = timm.create_model('vit_tiny_rope_mixed', **model_args)
    with torch.no_grad():  # always class 1, which is 1 image of 4
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0., 5.]))
    ckpt_dir = tmp_path / 'run'
    ckpt_dir.mkdir()
    save_file(model.state_dict(), str(ckpt_dir / 'model.safetensors'))
    (ckpt_dir / 'model_kwargs.json').write_text(json.dumps(dict(architecture='vit_tiny_rope_mixed',
                                                                model_args=model_args)))
    out = tmp_path / 'out'
    assert main(['sweep', 'vit_tiny_rope_mixed', '--checkpoint', str(ckpt_dir / 'model.safetensors'),
                 '--data-dir', str(data), '--sizes', '32,64', '--rope-scaling', 'none', 'ntk', '--workers', '0',
                 '--threads', '1', '--output-dir', str(out)]) == 0
    _, rows = read_csv(out / 'results.csv')
    assert len(rows) == 4
    assert {float(r['top1']) for r in rows} == {25.}
    assert {float(r['param_count']) for r in rows} == {round(sum(p.numel() for p in model.parameters()) / 1e6, 3)}


def test_sweep_imagenette_val_subset(tmp_path):
    if not IMAGENETTE_VAL.is_dir():
        pytest.skip(f'Imagenette not found at {IMAGENETTE_VAL} (see shared/data/README.md); skipping the real-data sweep')
    subset = tmp_path / 'imagenette' / 'val'
    classes = sorted(d.name for d in IMAGENETTE_VAL.iterdir() if d.is_dir())
    for wnid in classes:  # symlinks to two images per class, nothing copied
        (subset / wnid).mkdir(parents=True)
        for image in sorted((IMAGENETTE_VAL / wnid).iterdir())[:2]:
            (subset / wnid / image.name).symlink_to(image)
    out = tmp_path / 'out'
    assert main(['sweep', 'vit_tiny_alibi2d', '--data-dir', str(subset.parent), '--sizes', '32,64',
                 '--model-kwargs', *TINY, 'num_classes=10', '--workers', '0', '--threads', '1',
                 '--output-dir', str(out)]) == 0
    assert len(classes) == 10
    _, rows = read_csv(out / 'results.csv')
    assert [(r['model'], r['img_size']) for r in rows] == [('vit_tiny_alibi2d', '32'), ('vit_tiny_alibi2d', '64')]
    for row in rows:  # 20 images: multiples of 5 %
        assert float(row['top1']) % 5 == 0 and float(row['top1']) <= float(row['top5'])


def test_sweep_hooks_scale_from_the_recorded_training_grid_or_are_refused(tmp_path):
    """``timm-pe sweep --checkpoint`` with RoPE hooks: a checkpoint records its training grid (64 px, 8x8
    patches of 8), which the hooks scale from although the sweep builds at the default 224; an old one
    without the record and no training size given is refused rather than swept with hooks that equal none."""
    import timm
    from safetensors.torch import save_file
    from timm_pe.tools.sweep import create_models
    arch = dict(embed_dim=32, depth=1, num_heads=2, patch_size=8)
    state = timm.create_model('vit_tiny_rope_axial', img_size=64, **arch).state_dict()
    save_file(state, str(tmp_path / 'new.safetensors'))
    models = create_models('vit_tiny_rope_axial', tmp_path / 'new.safetensors', arch, ['none', 'interp'],
                           pretrained=False, label='m')
    assert models['m+interp'].blocks[0].attn.pos_enc.train_grid == (8, 8)
    assert models['m'].patch_embed.grid_size == (28, 28)

    save_file({k: v for k, v in state.items() if 'rope_train_grid' not in k}, str(tmp_path / 'old.safetensors'))
    with pytest.raises(ValueError, match='does not record the grid.*--model-kwargs img_size=SIZE'):
        create_models('vit_tiny_rope_axial', tmp_path / 'old.safetensors', arch, ['none', 'interp'],
                      pretrained=False, label='m')
    with pytest.warns(UserWarning, match='does not record'):  # the training size given: swept from it
        models = create_models('vit_tiny_rope_axial', tmp_path / 'old.safetensors', dict(arch, img_size=64),
                               ['none', 'ntk'], pretrained=False, label='m')
    assert models['m+ntk'].blocks[0].attn.pos_enc.train_grid == (8, 8)
