"""timm's own ``tests/test_models.py`` (from the installed timm's sdist), run unmodified over our models.

timm's module parametrizes its tests over ``timm.list_models`` with its own filters; importing ``timm_pe``
first puts our models in that list. ``conftest.py`` keeps the items of our models (tiny and small; base with
``TIMM_PE_TEST_BASE=1``) and deselects the rest, and the tests that download weights.
"""
import timm_pe  # noqa: F401  (registers our models before timm's module lists them)
from timm_sdist import import_timm_test_module

globals().update({name: value for name, value in vars(import_timm_test_module('test_models')).items()
                  if not name.startswith('__')})
