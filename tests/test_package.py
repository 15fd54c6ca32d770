"""The public API: every advertised name resolves, and importing the package stays light."""

from __future__ import annotations

import subprocess
import sys

import leanvision


def test_every_public_name_resolves():
    for name in leanvision.__all__:
        assert getattr(leanvision, name) is not None, name
    assert set(leanvision._LAZY) <= set(leanvision.__all__)


def test_public_functions_stay_functions_after_their_modules_are_imported():
    import leanvision.evaluate  # noqa: F401
    import leanvision.info  # noqa: F401
    import leanvision.predict  # noqa: F401

    for name in ("evaluate", "info", "predict"):
        assert callable(getattr(leanvision, name)), name


def test_import_does_not_load_the_training_or_onnx_stacks():
    code = ("import sys, leanvision; heavy = [m for m in ('onnx', 'onnxruntime', "
            "'leanvision.training', 'leanvision.compress') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
