"""``timm-pe make-imagenet100`` on a fake ImageNet-1k folder, and the train.py recipes in recipes/."""
from pathlib import Path

import pytest
import timm
import yaml
from timm.data import ImageDataset
from timm.models import get_pretrained_cfg

from timm_pe.tools.cli import main as cli_main
from timm_pe.models._pretrained import imagenet100_wnids

RECIPES = sorted((Path(__file__).resolve().parents[2] / 'recipes').glob('*.yaml'))
# argument names of timm's train.py (1.0.x) that the recipes use; a typo would be rejected by train.py
TRAIN_PY_ARGS = {
    'device_modules', 'model', 'num_classes', 'img_size', 'train_split', 'val_split', 'epochs', 'batch_size', 'opt',
    'opt_betas', 'lr', 'weight_decay', 'sched', 'sched_on_updates', 'warmup_epochs', 'aa', 'mixup', 'cutmix',
    'reprob', 'smoothing',
}


@pytest.fixture
def imagenet(tmp_path):
    """An ImageNet-1k layout with one image per class for the ImageNet100 classes and one extra class."""
    root = tmp_path / 'imagenet'
    for split in ('train', 'val'):
        for wnid in (*imagenet100_wnids(), 'n15075141'):
            (root / split / wnid).mkdir(parents=True)
            (root / split / wnid / f'{wnid}_1.JPEG').touch()
    return root


def test_links_the_100_classes_in_label_order(imagenet, tmp_path, capsys):
    out = tmp_path / 'imagenet100'
    for _ in range(2):  # a second run over its own links is a no-op
        cli_main(['make-imagenet100', str(imagenet), str(out)])
    assert 'train: 100 images, val: 100 images' in capsys.readouterr().out
    for split in ('train', 'val'):
        links = sorted((out / split).iterdir())
        assert [p.name for p in links] == list(imagenet100_wnids()) and all(p.is_symlink() for p in links)
        dataset = ImageDataset(str(out / split))
        assert len(dataset) == 100 and list(dataset.reader.class_to_idx) == list(imagenet100_wnids())


def test_missing_classes_are_named_before_anything_is_written(imagenet, tmp_path):
    absent = imagenet100_wnids()[:2]
    for wnid in absent:
        (imagenet / 'val' / wnid / f'{wnid}_1.JPEG').unlink()
        (imagenet / 'val' / wnid).rmdir()
    with pytest.raises(FileNotFoundError, match=f'val/: 2 of 100 missing: {absent[0]} {absent[1]}'):
        cli_main(['make-imagenet100', str(imagenet), str(tmp_path / 'out')])
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('recipe', RECIPES, ids=lambda p: p.name)
def test_recipe_is_a_train_py_config_for_a_registered_in100_tag(recipe):
    config = yaml.safe_load(recipe.read_text())
    assert set(config) <= TRAIN_PY_ARGS
    assert recipe.name == f'{config["model"]}.in100.yaml' and config['model'] in timm.list_models()
    assert get_pretrained_cfg(f'{config["model"]}.in100').num_classes == config['num_classes'] == 100
    assert config['device_modules'] == ['timm_pe'] and config['aa'] == 'rand-m9-mstd0.5'
    numbers = dict(lr=1e-3, weight_decay=.05, mixup=.8, cutmix=1., reprob=.25, smoothing=.1, epochs=100,
                   warmup_epochs=20, batch_size=256, img_size=224)
    assert {k: config[k] for k in numbers} == numbers  # floats, not strings such as YAML's '1e-3'
