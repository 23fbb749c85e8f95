"""timm's own test modules, taken from the source distribution of the installed timm version.

``pip download --no-deps --no-binary :all: timm==<version>`` fetches the sdist once into a cache folder
(pytest's cache dir by default, ``$TIMM_PE_TIMM_SDIST_CACHE`` otherwise); the test files are unpacked next
to it and imported unmodified.
"""
import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import timm

DEFAULT_CACHE = Path(__file__).resolve().parents[2] / '.pytest_cache' / 'd' / 'timm-sdist'


def timm_tests_dir(cache: Path = None) -> Path:
    """The ``tests/`` folder of the installed timm's sdist, downloaded and unpacked on first use."""
    cache = Path(cache or os.environ.get('TIMM_PE_TIMM_SDIST_CACHE') or DEFAULT_CACHE)
    version = timm.__version__
    tests = cache / f'timm-{version}' / 'tests'
    if (tests / 'test_models.py').is_file():
        return tests
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f'timm-{version}.tar.gz'
    if not archive.is_file():
        subprocess.run([sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:',
                        '--disable-pip-version-check', '--quiet', f'timm=={version}', '-d', str(cache)],
                       check=True)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile() and m.name.startswith(f'timm-{version}/tests/') and m.name.endswith('.py')]
        tar.extractall(cache, members=members, filter='data')
    return tests


def import_timm_test_module(name: str) -> ModuleType:
    """Import timm's ``tests/<name>.py`` as the module ``timm_tests_<name>``."""
    path = timm_tests_dir() / f'{name}.py'
    spec = importlib.util.spec_from_file_location(f'timm_tests_{name}', path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
