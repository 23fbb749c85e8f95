"""``python -m timm_pe.tools.run SCRIPT ARGS``: an unmodified script sees the plugin models and its own argv."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from timm_pe.tools.run import main

REPO = Path(__file__).resolve().parents[2]
SCRIPT = '''import sys
import timm
model = timm.create_model('vit_tiny_rope_axial', depth=1)
open(sys.argv[1], 'w').write(f'{type(model).__name__} {__name__} {sys.argv[2:]}')
'''


def test_script_runs_with_models_registered(tmp_path):
    (tmp_path / 'validate.py').write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]))
    subprocess.run([sys.executable, '-m', 'timm_pe.tools.run', str(tmp_path / 'validate.py'), str(tmp_path / 'out'),
                    '--img-size', '384'], check=True, env=env, cwd=tmp_path)
    assert (tmp_path / 'out').read_text() == "PositionalVisionTransformer __main__ ['--img-size', '384']"


def test_in_process_run_restores_argv_and_names_a_missing_script(tmp_path):
    (tmp_path / 'validate.py').write_text(SCRIPT)
    argv = list(sys.argv)
    main([str(tmp_path / 'validate.py'), str(tmp_path / 'out')])
    assert sys.argv == argv and (tmp_path / 'out').read_text().startswith('PositionalVisionTransformer')
    with pytest.raises(SystemExit, match='nope.py not found'):
        main([str(tmp_path / 'nope.py')])
