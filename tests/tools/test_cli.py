"""The timm-pe command line: every subcommand listed, timm's conventions for shared flags, and an export
from a regular (non-editable) install of the wheel."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
from safetensors.torch import save_file

from timm_pe.tools import bench, study, sweep
from timm_pe.tools.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['--help'])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize('module, command, required', [
    (bench, 'bench', []), (sweep, 'sweep', ['--data-dir', '.']), (study, 'study', [])])
def test_model_kwargs_are_parsed_as_timm_scripts_do(module, command, required):
    parser = argparse.ArgumentParser()
    getattr(module, f'add_{command}_arguments')(parser)
    args = parser.parse_args(required + ['--model-kwargs', 'class_token=False', 'depth=2', 'img_size=(64, 96)',
                                         'global_pool=avg'])
    assert args.model_kwargs == {'class_token': False, 'depth': 2, 'img_size': (64, 96), 'global_pool': 'avg'}


@pytest.mark.parametrize('command', ['bench', 'sweep'])
def test_model_flags_follow_timm(command):
    parser = argparse.ArgumentParser()
    getattr({'bench': bench, 'sweep': sweep}[command], f'add_{command}_arguments')(parser)
    args = parser.parse_args(['vit_tiny_ape', '--model', 'vit_tiny_rpb', '-b', '3', '--results-file', 'x.csv',
                              '--amp', '--model-dtype', 'bfloat16', '--torchcompile', '--data-dir', '.'][
                             :None if command == 'sweep' else -2])
    assert args.model_names + args.model_flags == ['vit_tiny_ape', 'vit_tiny_rpb']
    assert (args.batch_size, args.results_file.name, args.amp, args.model_dtype, args.torchcompile) == (
        3, 'x.csv', True, 'bfloat16', 'inductor')


def test_export_from_an_installed_wheel(tmp_path):
    """The card template ships with the package: an export from site-packages writes the whole folder."""
    wheel_dir, site = tmp_path / 'wheel', tmp_path / 'site'
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w',
                    str(wheel_dir), str(REPO)], check=True, cwd=tmp_path)
    wheel = next(wheel_dir.glob('timm_pe-*.whl'))
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(site), str(wheel)],
                   check=True, cwd=tmp_path)
    model = timm.create_model('vit_tiny_ape', depth=1, num_classes=3)
    checkpoint = tmp_path / 'trained.safetensors'
    save_file(model.state_dict(), checkpoint)
    env = dict(os.environ, PYTHONPATH=str(site))
    script = (
        'import sys, timm_pe; from timm_pe.tools.cli import main; '
        f'assert timm_pe.__file__.startswith({str(site)!r}), timm_pe.__file__; '
        "sys.exit(main(['export', 'vit_tiny_ape', 'out', '--checkpoint', 'trained.safetensors', "
        "'--num-classes', '3', '--model-kwargs', 'depth=1']))")
    subprocess.run([sys.executable, '-c', script], check=True, cwd=tmp_path, env=env)
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert 'vit_tiny_ape' in (tmp_path / 'out' / 'README.md').read_text()


def test_export_writes_nothing_when_the_card_fails(tmp_path):
    from timm_pe.publish import export
    model = timm.create_model('vit_tiny_ape', depth=1)
    with pytest.raises(FileNotFoundError):
        export(model, tmp_path / 'out', template=tmp_path / 'missing.md')
    assert not (tmp_path / 'out').exists()
