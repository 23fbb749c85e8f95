"""timm-pe study end to end on a fake Imagenette: resume after an interrupt gives the uninterrupted
weights, finished runs and sweeps are cached, and every result file is written."""
import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from timm_pe.tools import study
from timm_pe.tools.cli import main


@pytest.fixture(scope='module')
def fake_imagenette(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('imagenette')
    rng = np.random.default_rng(0)
    for split, count in (('train', 4), ('val', 3)):
        for c in range(2):
            folder = root / split / f'n0{c}'
            folder.mkdir(parents=True)
            for i in range(count):
                mode = 'L' if i == 0 else 'RGB'  # Imagenette has greyscale images too
                shape = (48, 48) if mode == 'L' else (48, 48, 3)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f'{i}.JPEG')
    return root


def study_args(data: Path, work: Path, *extra: str):
    return ['study', '--data-dir', str(data), '--work-dir', str(work / 'runs'), '--results-dir', str(work / 'results'),
            '--variants', 'ape', 'rope_axial', '--epochs', '2', '--batch-size', '4', '--sizes', '32,64',
            '--model-kwargs', 'embed_dim=32', 'depth=1', 'num_heads=2', '--threads', '1', *extra]


def test_resume_after_interrupt_and_caching(fake_imagenette, tmp_path, monkeypatch, capsys):
    reference, interrupted = tmp_path / 'reference', tmp_path / 'interrupted'
    assert main(study_args(fake_imagenette, reference, '--no-sweep')) == 0

    save_atomic = study._save_atomic

    def save_then_die(state, path):
        save_atomic(state, path)
        if path.name == 'checkpoint.pt':
            raise KeyboardInterrupt

    monkeypatch.setattr(study, '_save_atomic', save_then_die)
    with pytest.raises(KeyboardInterrupt):
        main(study_args(fake_imagenette, interrupted))
    assert torch.load(interrupted / 'runs' / 'ape' / 'checkpoint.pt')['epoch'] == 0
    assert not (interrupted / 'runs' / 'ape' / 'result.json').exists()
    monkeypatch.undo()
    capsys.readouterr()

    assert main(study_args(fake_imagenette, interrupted)) == 0
    assert '[ape] resuming after epoch 1 of 2' in capsys.readouterr().out
    for variant in ('ape', 'rope_axial'):
        resumed = load_file(str(interrupted / 'runs' / variant / 'model.safetensors'))
        straight = load_file(str(reference / 'runs' / variant / 'model.safetensors'))
        assert resumed.keys() == straight.keys()
        assert all(torch.equal(resumed[k], straight[k]) for k in resumed), variant

    results = interrupted / 'results'
    with open(results / 'results.csv') as f:
        rows = list(csv.DictReader(f))
    assert {(r['model'], r['img_size']) for r in rows} == {
        (m, s) for m in ('ape', 'rope_axial', 'rope_axial+interp', 'rope_axial+ntk') for s in ('32', '64')}
    for name in ('results.md', 'recipe.json', 'train_times.csv'):
        assert (results / name).stat().st_size > 0
    if importlib.util.find_spec('matplotlib'):
        assert (results / 'top1_vs_resolution.png').stat().st_size > 1000

    # a second call neither trains nor evaluates again
    def fail(*args, **kwargs):
        raise AssertionError('cached work was redone')

    for name in ('create_study_model', 'create_models', 'evaluate'):
        monkeypatch.setattr(study, name, fail)
    assert main(study_args(fake_imagenette, interrupted)) == 0
    assert capsys.readouterr().out.count('done already') == 2


def test_changed_recipe_is_refused(fake_imagenette, tmp_path):
    assert main(study_args(fake_imagenette, tmp_path, '--no-sweep', '--variants', 'ape')) == 0
    with pytest.raises(ValueError, match='another configuration'):
        main(study_args(fake_imagenette, tmp_path, '--no-sweep', '--variants', 'ape', '--lr', '0.1'))


def test_missing_data_is_reported(tmp_path, capsys):
    assert main(study_args(tmp_path / 'absent', tmp_path)) == 2
    assert 'Imagenette not found' in capsys.readouterr().out
