"""timm-pe bench: CSV rows in timm benchmark.py's columns, the ratio to the APE baseline, the plots."""
import csv
import importlib.util

import pytest
import torch

import timm
import timm_pe  # noqa: F401
from timm_pe.tools.bench import ape_baseline, bench_size, saved_for_backward_mb
from timm_pe.tools.cli import main


def test_ape_baseline():
    assert ape_baseline('vit_small_rope_mixed') == 'vit_small_ape'
    assert ape_baseline('vit_tiny_ape') == 'vit_tiny_ape'
    assert ape_baseline('resnet50') is None


def test_bench_cli_rows_and_ratio(tmp_path):
    out = tmp_path / 'bench'
    assert main(['bench', 'vit_tiny_rope_axial', 'vit_tiny_alibi2d', '--sizes', '32,64', '--train',
                 '--model-kwargs', 'depth=1', 'embed_dim=32', 'num_heads=2', 'patch_size=16',
                 '--batch-size', '2', '--warmup', '0', '--iters', '1', '--threads', '1',
                 '--output-dir', str(out)]) == 0
    with open(out / 'bench.csv') as f:
        reader = csv.DictReader(f)
        columns, rows = reader.fieldnames, list(reader)
    for column in ('model', 'infer_samples_per_sec', 'infer_step_time', 'infer_batch_size', 'infer_img_size',
                   'param_count', 'train_samples_per_sec', 'train_step_time', 'train_batch_size', 'train_img_size',
                   'infer_tokens', 'train_saved_mb', 'infer_samples_per_sec_vs_ape', 'train_samples_per_sec_vs_ape',
                   'baseline'):
        assert column in columns
    # the APE baseline is added and comes first
    assert [(r['model'], r['infer_img_size']) for r in rows] == [
        (m, s) for m in ('vit_tiny_ape', 'vit_tiny_rope_axial', 'vit_tiny_alibi2d') for s in ('32', '64')]
    by_key = {(r['model'], r['infer_img_size']): r for r in rows}
    for row in rows:
        assert int(row['infer_tokens']) == (int(row['infer_img_size']) // 16) ** 2 + 1
        assert float(row['infer_samples_per_sec']) > 0 and float(row['train_samples_per_sec']) > 0
        ape = by_key['vit_tiny_ape', row['infer_img_size']]
        for phase in ('infer', 'train'):
            expected = float(row[f'{phase}_samples_per_sec']) / float(ape[f'{phase}_samples_per_sec'])
            assert float(row[f'{phase}_samples_per_sec_vs_ape']) == pytest.approx(expected, rel=1e-2, abs=2e-3)
    assert {float(r['infer_samples_per_sec_vs_ape']) for r in rows if r['model'] == 'vit_tiny_ape'} == {1.}
    if importlib.util.find_spec('matplotlib'):
        assert (out / 'bench_infer.png').stat().st_size > 1000
        assert (out / 'bench_train.png').stat().st_size > 1000


def test_models_of_one_size_are_timed_round_robin():
    """Every round runs one step of each model, so a load change on a shared machine hits all of them alike."""
    kwargs = dict(depth=1, embed_dim=32, num_heads=2, img_size=32)
    models = {name: timm.create_model(name, **kwargs) for name in ('vit_tiny_ape', 'vit_tiny_rope_axial')}
    calls = []
    for name, model in models.items():
        model.register_forward_hook(lambda module, args, out, name=name: calls.append((name, module.training)))
    rows = bench_size(models, 32, 2, torch.device('cpu'), warmup=1, iters=4, train=True)
    for training in (False, True):
        order = [name for name, mode in calls if mode == training]
        rounds = [set(order[i:i + 2]) for i in range(0, len(order), 2)]
        assert len(rounds) == 5 + training and all(r == set(models) for r in rounds), order  # + saved_mb's forward
    images = torch.randn(2, 3, 32, 32)
    for name, row in rows.items():
        assert row['infer_step_time'] > 0 and row['train_step_time'] > 0
        assert row['train_saved_mb'] == round(saved_for_backward_mb(models[name], lambda: models[name](images)), 1)


def test_saved_for_backward_counts_activations_not_parameters():
    layer = torch.nn.Linear(256, 256)
    x = torch.randn(64, 256)
    # linear + relu + sum save the input (64x256) and the relu output (64x256), float32; not the weight
    saved = saved_for_backward_mb(layer, lambda: layer(x).relu().sum())
    assert saved == pytest.approx(2 * 64 * 256 * 4 / 2 ** 20)


def test_rpb_saves_more_for_backward_than_rope():
    """The bias is one more (heads, N, N) tensor per layer that autograd keeps: the cost RoPE avoids."""
    kwargs = dict(depth=1, embed_dim=64, num_heads=4, img_size=128)
    x = torch.randn(2, 3, 128, 128)
    saved = {}
    for name in ('vit_tiny_rope_axial', 'vit_tiny_rpb'):
        model = timm.create_model(name, **kwargs)
        saved[name] = saved_for_backward_mb(model, lambda: model(x).sum())
    assert saved['vit_tiny_rpb'] > saved['vit_tiny_rope_axial']


def test_bench_swin_with_default_kwargs_names_the_ratio_after_its_baseline(tmp_path):
    """``timm-pe bench`` on Swin as the demo runs it: no --model-kwargs (the family's default depths)."""
    out = tmp_path / 'bench'
    assert main(['bench', 'swin_tiny_rpb', 'swin_tiny_alibi2d', '--baseline', 'swin_tiny_rpb', '--sizes', '64',
                 '--batch-size', '1', '--warmup', '0', '--iters', '1', '--threads', '1',
                 '--output-dir', str(out)]) == 0
    with open(out / 'bench.csv') as f:
        reader = csv.DictReader(f)
        columns, rows = reader.fieldnames, list(reader)
    assert 'infer_samples_per_sec_vs_rpb' in columns and not any('vs_ape' in c for c in columns)
    assert {r['baseline'] for r in rows} == {'swin_tiny_rpb'}
    assert [r['model'] for r in rows] == ['swin_tiny_rpb', 'swin_tiny_alibi2d']
    assert float(rows[0]['infer_samples_per_sec_vs_rpb']) == 1.


def test_bare_model_kwargs_builds_models_as_registered():
    """benchmarks/models.py passes a bare --model-kwargs to measure full-depth models, not the shallow default."""
    import argparse
    from timm_pe.tools.bench import add_bench_arguments
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    assert parser.parse_args([]).model_kwargs is None
    assert parser.parse_args(['--model-kwargs']).model_kwargs == {}
    assert parser.parse_args(['--model-kwargs', 'depth=2']).model_kwargs == {'depth': 2}


def test_reparam_flag_reparameterizes_the_model_as_timms_scripts_do():
    import argparse
    from timm_pe.layers import PositionalAttention
    from timm_pe.tools.bench import add_bench_arguments
    from timm_pe.tools.common import prepare_model
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    for flags, expected in (([], False), (['--reparam'], True)):
        model = prepare_model(timm.create_model('vit_tiny_rope_axial', depth=1, img_size=32), parser.parse_args(flags))
        assert {m.qkv_pair_order for m in model.modules() if isinstance(m, PositionalAttention)} == {expected}
