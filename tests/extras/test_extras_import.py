"""The MACE and NequIP factories import their libraries lazily: the base package works without them, and calling a
factory where its library is missing says how to install it. Runs in every environment."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest


def test_importing_the_factories_imports_neither_library() -> None:
    code = (
        "import sys\nimport relaxcli.tasks.atoms_extras\n"
        "loaded = [m for m in ('mace', 'nequip', 'lightning') if m in sys.modules]\nassert not loaded, loaded\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("factory, module", [("mace_model", "mace"), ("nequip_model", "nequip")])
def test_a_missing_library_is_named_with_its_install_command(factory: str, module: str) -> None:
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    from relaxcli.tasks import atoms_extras

    with pytest.raises(ImportError, match=rf"{factory} needs {module}, an optional extra: pip install"):
        getattr(atoms_extras, factory)()
