"""What importing cocosnet_ops needs. A missing or broken ``_C`` is one clear warning and the
reference runs; with COCOSNET_REQUIRE_COMPILED=1 the suite stops at collection, naming the
import error. OpenCV, an optional extra, is needed only by the flow colouring.

Each case runs in a fresh interpreter where an import hook makes one module (BLOCK) fail the
way a missing module or a broken build does (FAIL_AS).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cocosnet_ops
from cocosnet_ops._extension import REBUILD_COMMAND, built_torch_version, load_failure_message

ROOT = Path(__file__).resolve().parents[1]

# Prepended to every script.
BLOCK_MODULE = """
import os, sys
class _FailingModule:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != os.environ["BLOCK"]:
            return None
        if os.environ["FAIL_AS"] == "missing":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        raise ImportError("_C.so: undefined symbol: _ZN3c104impl8GPUTrace9haveStateE")
sys.meta_path.insert(0, _FailingModule)
"""

USE_WITHOUT_EXTENSION = """
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import cocosnet_ops
    import cocosnet_ops.ops
import torch
messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
assert len(messages) == 1, messages
print(messages[0])
assert not cocosnet_ops.HAS_COMPILED
fq, fk = torch.randn(1, 4, 5, 6), torch.randn(1, 4, 6, 5)
got = cocosnet_ops.patch_match(fq, fk, k=3, iters=2)
expected = cocosnet_ops.reference.patch_match(fq, fk, 3, 2)
assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
try:
    cocosnet_ops.patch_match(fq, fk, k=3, backend="cpu")
except ValueError as error:
    assert str(error).startswith("backend"), error
else:
    raise AssertionError("backend='cpu' ran without the extension")
"""


def run_python(
    script: str, fail_as: str, block: str = "cocosnet_ops._C", **env: str
) -> subprocess.CompletedProcess:
    environment = {name: value for name, value in os.environ.items() if name != "COCOSNET_REQUIRE_COMPILED"}
    environment.update(BLOCK=block, FAIL_AS=fail_as, **env)
    return subprocess.run(
        [sys.executable, "-c", BLOCK_MODULE + script],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    ("fail_as", "says"),
    [("missing", "cocosnet_ops._C is not built"), ("broken", "undefined symbol: _ZN3c104impl8GPUTrace")],
)
def test_without_the_extension_one_warning_and_the_reference_runs(fail_as, says):
    done = run_python(USE_WITHOUT_EXTENSION, fail_as)
    assert done.returncode == 0, done.stderr
    assert says in done.stdout
    assert "pip install --no-build-isolation -e ." in done.stdout


COLLECT = """
import pytest
sys.exit(pytest.main(["-q", "--collect-only", "-p", "no:cacheprovider", "tests/test_readme.py"]))
"""


BUILT_AGAINST_ANOTHER_TORCH = """
import types
sys.modules["cocosnet_ops._build_info"] = types.SimpleNamespace(TORCH_VERSION="2.12.0+cpu")
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import cocosnet_ops
(message,) = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
print(message)
"""


def test_extension_built_against_another_torch_names_both_versions():
    done = run_python(BUILT_AGAINST_ANOTHER_TORCH, "broken")
    assert done.returncode == 0, done.stderr
    assert f"built against torch 2.12.0+cpu but torch {torch.__version__} is installed" in done.stdout
    assert "undefined symbol" in done.stdout and REBUILD_COMMAND in done.stdout


def test_load_failure_messages():
    broken = ImportError("_C.so: undefined symbol: _ZN3c10")
    missing = ModuleNotFoundError("No module named 'cocosnet_ops._C'", name="cocosnet_ops._C")
    other = load_failure_message(broken, "2.12.0", "2.13.0")
    assert "built against torch 2.12.0 but torch 2.13.0" in other and REBUILD_COMMAND in other
    same = load_failure_message(broken, "2.13.0", "2.13.0")
    assert "failed to load (_C.so: undefined symbol: _ZN3c10)" in same and REBUILD_COMMAND in same
    assert load_failure_message(broken, None, "2.13.0") == same
    assert "is not built" in load_failure_message(missing, "2.12.0", "2.13.0")


@pytest.mark.skipif(not cocosnet_ops.HAS_COMPILED, reason="cocosnet_ops._C is not built")
def test_build_records_the_torch_it_was_built_against():
    assert built_torch_version() == torch.__version__


def test_required_extension_fails_collection_with_the_import_error():
    done = run_python(COLLECT, "broken", COCOSNET_REQUIRE_COMPILED="1")
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "COCOSNET_REQUIRE_COMPILED=1" in output
    assert "undefined symbol: _ZN3c104impl8GPUTrace9haveStateE" in output
    # Without the variable the same environment collects (and would run the reference).
    assert run_python(COLLECT, "broken").returncode == pytest.ExitCode.OK


WITHOUT_OPENCV = """
import torch
import cocosnet_ops
from cocosnet_ops import nnf
offsets = nnf.nnf_to_offsets(torch.zeros(1, 1, 2, 2, dtype=torch.int32), (2, 2))
assert offsets.shape == (1, 1, 2, 2, 2)
try:
    nnf.flow_to_color(offsets[0, 0].float())
except ImportError as error:
    print(error)
else:
    raise AssertionError("flow_to_color ran without OpenCV")
"""


def test_import_does_not_need_opencv():
    done = run_python(WITHOUT_OPENCV, "missing", block="cv2")
    assert done.returncode == 0, done.stderr
    assert "flow_to_color needs OpenCV" in done.stdout and "pip install opencv-python-headless" in done.stdout
