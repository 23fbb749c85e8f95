"""timm-pe study end to end on a fake Imagenette: resume after an interrupt gives the uninterrupted
weights, finished runs and sweeps are cached per (variant, seed), every result file is written, and the
summary over seeds (mean, spread, rankings) is what the per-seed CSVs say."""
import csv
import importlib.util
import json
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


def read_csv(path: Path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def study_args(data: Path, work: Path, *extra: str):
    return ['study', '--data-dir', str(data), '--work-dir', str(work / 'runs'), '--results-dir', str(work / 'results'),
            '--variants', 'ape', 'rope_axial', '--epochs', '2', '--batch-size', '4', '--sizes', '32,64',
            '--model-kwargs', 'embed_dim=32', 'depth=1', 'num_heads=2', '--threads', '1', '--seeds', '0', *extra]


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
    assert torch.load(interrupted / 'runs' / 'seed0' / 'ape' / 'checkpoint.pt')['epoch'] == 0
    assert not (interrupted / 'runs' / 'seed0' / 'ape' / 'result.json').exists()
    monkeypatch.undo()
    capsys.readouterr()

    assert main(study_args(fake_imagenette, interrupted)) == 0
    assert '[ape seed 0] resuming after epoch 1 of 2' in capsys.readouterr().out
    for variant in ('ape', 'rope_axial'):
        resumed = load_file(str(interrupted / 'runs' / 'seed0' / variant / 'model.safetensors'))
        straight = load_file(str(reference / 'runs' / 'seed0' / variant / 'model.safetensors'))
        assert resumed.keys() == straight.keys()
        assert all(torch.equal(resumed[k], straight[k]) for k in resumed), variant

    results = interrupted / 'results'
    rows = read_csv(results / 'seed0' / 'results.csv')
    assert {(r['model'], r['img_size']) for r in rows} == {
        (m, s) for m in ('ape', 'rope_axial', 'rope_axial+interp', 'rope_axial+ntk') for s in ('32', '64')}
    for name in ('results.md', 'recipe.json', 'summary.csv', 'seed0/train_times.csv'):
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


def test_seeds_are_cached_apart_and_summarised(fake_imagenette, tmp_path, capsys):
    assert main(study_args(fake_imagenette, tmp_path, '--variants', 'ape', '--seeds', '0', '1')) == 0
    runs, results = tmp_path / 'runs', tmp_path / 'results'
    first, second = (load_file(str(runs / f'seed{k}' / 'ape' / 'model.safetensors')) for k in (0, 1))
    assert not torch.equal(first['pos_embed'], second['pos_embed'])
    per_seed = {k: {int(r['img_size']): float(r['top1']) for r in read_csv(results / f'seed{k}' / 'results.csv')}
                for k in (0, 1)}
    summary = {int(r['img_size']): r for r in read_csv(results / 'summary.csv')}
    for size in (32, 64):
        values = [per_seed[0][size], per_seed[1][size]]
        assert summary[size]['seeds'] == '2'
        assert float(summary[size]['top1_mean']) == pytest.approx(sum(values) / 2, abs=1e-3)
        assert float(summary[size]['top1_std']) == pytest.approx(abs(values[0] - values[1]) / 2 ** .5, abs=1e-3)
    assert '### 64 px (1x the training size)' in (results / 'results.md').read_text()

    # a later call adds a size to what is there; --no-train sweeps only finished runs
    capsys.readouterr()
    assert main(study_args(fake_imagenette, tmp_path, '--variants', 'ape', '--seeds', '1', '2', '--sizes', '48',
                           '--no-train')) == 0
    assert 'ape seed 2] not trained' in capsys.readouterr().out
    assert not (runs / 'seed2').exists()
    assert {r['img_size'] for r in read_csv(results / 'seed1' / 'results.csv')} == {'32', '48', '64'}
    assert {r['img_size'] for r in read_csv(results / 'seed0' / 'results.csv')} == {'32', '64'}
    rows = {int(r['img_size']): r['seeds'] for r in read_csv(results / 'summary.csv')}
    assert rows == {32: '2', 48: '1', 64: '2'}
    recipe = json.loads((results / 'recipe.json').read_text())
    assert recipe['seeds'] == [0, 1] and recipe['sweep_sizes'] == [32, 48, 64] and 'seed' not in recipe['recipe']


def write_seed_csv(folder: Path, top1: dict) -> None:
    folder.mkdir(parents=True)
    rows = [dict(model=m, img_size=s, top1=v, top5=v, param_count=1.) for (m, s), v in top1.items()]
    study.write_csv(rows, folder / 'results.csv', study.RESULTS_COLUMNS)


def test_summary_ranks_and_marks_only_gaps_beyond_every_seed(tmp_path):
    # a: always ahead of c; b: mean between them but its seeds overlap both
    by_seed = {0: dict(a=60., b=55., c=50.), 1: dict(a=61., b=62., c=51.), 2: dict(a=59., b=50.5, c=52.)}
    for seed, values in by_seed.items():
        write_seed_csv(tmp_path / f'seed{seed}', {(m, 64): v for m, v in values.items()} | {('a', 96): 1. + seed})
    assert main(['study', '--summary-only', '--results-dir', str(tmp_path)]) == 0
    text = (tmp_path / 'results.md').read_text()
    assert '| 1 | a | 60.00 ± 1.00 | 59.00 - 61.00 | 3 | 3 |' in text
    assert '| 2 | b | 55.83 ± 5.80 | 50.50 - 62.00 | 3 | - |' in text
    assert '| 3 | c | 51.00 ± 1.00 | 50.00 - 52.00 | 3 | - |' in text
    summary = {(r['model'], r['img_size']): r for r in read_csv(tmp_path / 'summary.csv')}
    assert summary['a', '96']['top1_min'] == '1.0' and summary['a', '96']['top1_max'] == '3.0'


def test_ratio_tables_take_each_seeds_change_from_its_own_training_size(tmp_path):
    from timm_pe.tools.study_summary import article_table, paired_table, resolution_table, scores, read_seed_rows
    for seed, (at64, at96) in enumerate([(50., 53.), (52., 53.)]):
        write_seed_csv(tmp_path / f'seed{seed}', {('alibi2d', 64): at64, ('alibi2d', 96): at96,
                                                  ('nope', 64): 51. + seed})
    table = scores(read_seed_rows(tmp_path))
    assert resolution_table(table, 64)[3] == '| alibi2d | 51.0 ± 1.4 (2) | 53.0 ± 0.0 (2) | - |'
    assert paired_table(table, 64)[2:] == ['| alibi2d - nope | -0.5 [-1.0, 0.0] (2) | - | - |']
    # the article: (64.62 + 65.54) / 2 - 60.74 at 1.5x, 62.20 - 60.74 at its 2.29x
    assert article_table(table, 64)[3] == '| alibi2d | +4.3 | +2.0 (2) | +1.5 | - |'


def _marked_rows(path: Path, key: str):
    text = path.read_text()
    block = text[text.index(f'<!-- {key} -->'):text.index(f'<!-- /{key} -->')]
    headers = ('| encoding', '| A - B')
    return [line for line in block.splitlines() if line.startswith('| ') and not line.startswith(headers)]


def test_committed_write_ups_quote_the_committed_results():
    """The study tables in README.md and results/study/README.md are rows of the tables that
    ``timm-pe study --summary-only`` builds from the committed per-seed CSVs."""
    from timm_pe.tools.study_summary import article_table, paired_table, read_seed_rows, resolution_table, scores
    root = Path(__file__).resolve().parents[2]
    table = scores(read_seed_rows(root / 'results' / 'study'))
    train_size = study.Recipe.train_img_size
    tables = {'study-table': resolution_table(table, train_size), 'readme-table': resolution_table(table, train_size),
              'ratio-table': article_table(table, train_size), 'paired-table': paired_table(table, train_size)}
    study_readme = root / 'results' / 'study' / 'README.md'
    for path, key in [(root / 'README.md', 'readme-table'), (study_readme, 'study-table'),
                      (study_readme, 'ratio-table'), (study_readme, 'paired-table')]:
        rows = _marked_rows(path, key)
        assert rows and set(rows) <= set(tables[key]), (path, key, sorted(set(rows) - set(tables[key])))


def test_summary_without_seed_results_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='no seed<k>/results.csv'):
        main(['study', '--summary-only', '--results-dir', str(tmp_path)])


def test_unregistered_variant_is_refused(fake_imagenette, tmp_path, monkeypatch):
    monkeypatch.setitem(study.VARIANTS, 'future', ('vit_tiny_not_registered', {}))
    with pytest.raises(SystemExit, match='not registered'):
        study.run_study(study.argparse.Namespace(
            summary_only=False, threads=1, data_dir=fake_imagenette, variants=['future']))


def test_checkpoint_with_the_old_rpb_key_loads(tmp_path):
    """Runs saved before the layers/ layout name the RPB table ``pos_enc.table``."""
    import timm
    from safetensors.torch import save_file
    from timm.models import load_checkpoint
    from timm_pe.models.vit import checkpoint_filter_fn

    kw = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=3)
    saved = timm.create_model('vit_tiny_rpb', **kw)
    old = {k.replace('relative_position_bias_table', 'table'): v for k, v in saved.state_dict().items()}
    assert 'blocks.0.attn.pos_enc.table' in old
    save_file(old, str(tmp_path / 'model.safetensors'))
    loaded = timm.create_model('vit_tiny_rpb', **kw)
    load_checkpoint(loaded, str(tmp_path / 'model.safetensors'), filter_fn=checkpoint_filter_fn)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in saved.state_dict().items())
