"""Which of timm's test items run: those of our models, except the ones that download weights."""
import os

import timm

# timm's tests that fetch weights or reference tensors from the Hub
DOWNLOADING_TESTS = {'test_model_inference', 'test_model_load_pretrained', 'test_model_features_pretrained'}
BASE_ENV = 'TIMM_PE_TEST_BASE'


def our_models():
    """Every model timm_pe registers; base models only when ``$TIMM_PE_TEST_BASE`` is 1."""
    import timm_pe  # noqa: F401
    names = [n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith('timm_pe.')]
    if os.environ.get(BASE_ENV) != '1':
        names = [n for n in names if '_base_' not in n]
    return set(names)


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    ours = our_models()
    keep, drop = [], []
    for item in items:
        if not str(item.path).startswith(here):
            keep.append(item)
            continue
        params = getattr(getattr(item, 'callspec', None), 'params', {})
        model_name = params.get('model_name')
        if model_name is not None and model_name.split('.')[0] in ours and item.originalname not in DOWNLOADING_TESTS:
            keep.append(item)
        else:
            drop.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_configure(config):
    # the markers timm's test module uses (its pyproject registers them); timeout needs pytest-timeout
    for marker in ('base', 'cfg', 'cfg_nonstd', 'forward', 'backward', 'torchscript', 'features', 'fxforward',
                   'fxbackward', 'timeout'):
        config.addinivalue_line('markers', f'{marker}: marker of timm\'s tests/test_models.py')
