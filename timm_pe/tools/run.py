"""``timm-pe run SCRIPT [ARGS...]`` (or ``python -m timm_pe.tools.run``): run one of timm's scripts
(validate.py, inference.py, train.py, benchmark.py, ...) unchanged, with the timm-pe models registered.

timm's scripts are not in its pip package and only train.py can import a plugin (``--device-modules timm_pe``);
this registers the timm-pe models (importing this module does), then runs SCRIPT as ``__main__`` with ``sys.argv = [SCRIPT, *ARGS]`` and the script's
folder first on ``sys.path``, as ``python SCRIPT ARGS...`` would.
"""
import argparse
import runpy
import sys
from pathlib import Path


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__)
        sys.exit(0 if argv else 2)
    script = Path(argv[0])
    if not script.is_file():
        sys.exit(f'timm_pe.tools.run: script {script} not found (timm\'s scripts come from its GitHub repository)')
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv, sys.path[:0] = [str(script), *argv[1:]], [str(script.resolve().parent)]
    try:
        runpy.run_path(str(script), run_name='__main__')
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('script', help="path to one of timm's scripts, e.g. pytorch-image-models/validate.py")
    parser.add_argument('script_args', nargs=argparse.REMAINDER, help='its arguments, passed unchanged')


def run_run(args: argparse.Namespace) -> None:
    main([args.script, *args.script_args])


if __name__ == '__main__':
    main()
