"""Where CI runs (COCOSNET_REQUIRE_COMPILED=1), a test dependency that is missing or broken stops
the run at collection, naming it, instead of skipping its tests (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def collect_with_broken(package: str, tmp_path: Path, required: bool) -> subprocess.CompletedProcess:
    """Collect one small test file in a fresh pytest where importing ``package`` fails."""
    (tmp_path / package).mkdir(parents=True)
    (tmp_path / package / "__init__.py").write_text("raise ImportError('broken on purpose')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    env.pop("COCOSNET_REQUIRE_COMPILED", None)
    if required:
        env["COCOSNET_REQUIRE_COMPILED"] = "1"
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
               "tests/test_gru.py"]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("package", ["faiss", "triton"])
def test_a_broken_test_dependency_fails_collection_where_required(package, tmp_path):
    done = collect_with_broken(package, tmp_path / "required", required=True)
    assert done.returncode != 0
    assert "COCOSNET_REQUIRE_COMPILED=1, but the suite cannot run whole" in done.stdout + done.stderr
    assert f"{package}: " in done.stdout + done.stderr
    elsewhere = collect_with_broken(package, tmp_path / "optional", required=False)
    assert elsewhere.returncode == 0, elsewhere.stdout + elsewhere.stderr
