"""The study sits on top of `training`: a user's `python -m training` loads none of it."""

import pkgutil
import subprocess
import sys

import training
import training.commands


def test_training_never_imports_the_study():
    modules = [f"training.{m.name}" for m in pkgutil.iter_modules(training.__path__)]
    modules += [f"training.commands.{m.name}" for m in pkgutil.iter_modules(training.commands.__path__)]
    code = (
        f"import sys, {', '.join(m for m in modules if not m.endswith('__main__'))}; "
        "leaked = sorted(m for m in sys.modules if m == 'study' or m.startswith('study.')); "
        "assert not leaked, leaked"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
