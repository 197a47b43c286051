"""The published package's own public-API tests pass against pulseopt_torch.

The test fetches the reference source distribution from the package index
(the same registry every install here uses), takes its ``tests/test_scheduler.py``
(the tests of the public ``AEES`` API), changes only its two imports to
``pulseopt_torch``, and runs it. Nothing of it is stored in this repository.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tarfile

REFERENCE = "pulseopt==0.1.0"
API_TESTS = "pulseopt-0.1.0/tests/test_scheduler.py"
IMPORTS = {
    "from pulseopt import AEES\n": "from pulseopt_torch import AEES\n",
    "from pulseopt.types import CandidateConfig\n": "from pulseopt_torch import CandidateConfig\n",
}


def _reference_api_tests(folder: pathlib.Path) -> str:
    download = ["download", "--no-binary", ":all:", "--no-deps", "--quiet", "-d", str(folder)]
    subprocess.run([sys.executable, "-m", "pip", *download, REFERENCE], check=True, timeout=300)
    (archive,) = folder.glob("pulseopt-0.1.0.tar.gz")
    with tarfile.open(archive) as sdist:
        member = sdist.extractfile(API_TESTS)
        assert member is not None
        return member.read().decode()


def test_the_reference_public_api_tests_pass_with_only_the_import_changed(
    tmp_path: pathlib.Path,
) -> None:
    source = _reference_api_tests(tmp_path)
    for original, ours in IMPORTS.items():
        assert source.count(original) == 1, original
        source = source.replace(original, ours)
    assert "pulseopt." not in source.replace("pulseopt_torch", "")
    script = tmp_path / "test_reference_api.py"
    script.write_text(source)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(script), "-q", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in result.stdout
