"""``python tests/wheel/check_built_wheel.py``: build the sdist and, from it, the wheel
(``python -m build``), install the wheel (not editable) into this interpreter's environment, and
run tests/wheel from a temporary folder outside the checkout. The last step of ``tox -e trl-oldest``
(the next tox run puts the editable install back)."""

import glob
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

with tempfile.TemporaryDirectory(prefix="ganpo-wheel-") as outside:
    dist = Path(outside, "dist")
    subprocess.check_call([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)], cwd=outside)
    wheels = glob.glob(str(dist / "*.whl"))
    assert len(wheels) == 1 and glob.glob(str(dist / "*.tar.gz")), sorted(os.listdir(dist))
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps", wheels[0]]
    subprocess.check_call(pip, cwd=outside)
    pytest = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", str(REPO / "pyproject.toml"),
        "--rootdir", str(REPO), str(REPO / "tests/wheel"), *sys.argv[1:],
    ]  # fmt: skip
    sys.exit(subprocess.call(pytest, cwd=outside, env={**os.environ, "GANPO_WHEEL_INSTALLED": "1"}))
