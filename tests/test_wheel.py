"""Installed as a user installs it: the wheel, built and installed by deploy/install.sh (the
Dockerfile's steps), into a fresh venv that has the test venv's packages but not the checkout, then
a sweep in an empty folder. No download: the build uses the installed setuptools, pip runs with
PIP_NO_INDEX, and the dependencies are the test venv's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

import gbsweep
from conftest import ROOT

OURS = re.compile(r"^(__editable__.*gbsweep.*|gbsweep.*|__pycache__)$")  # the checkout's editable install


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; its site-packages listed before and after the install."""
    root = tmp_path_factory.mktemp("wheel")
    install = [sys.executable, "-m", "venv", "--without-pip", str(root / "venv")]
    subprocess.run(install, check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(root / "venv")}))
    # The test venv's packages, minus this checkout's editable install: a path line in a .pth file
    # puts them on sys.path without running their own .pth files (the editable finder among them).
    base = root / "base-packages"
    base.mkdir()
    for entry in Path(sysconfig.get_path("purelib")).iterdir():
        if not OURS.match(entry.name):
            (base / entry.name).symlink_to(entry)
    (site / "base-packages.pth").write_text(f"{base}\n")
    before = set(os.listdir(site))
    env = {**os.environ, "PIP_NO_INDEX": "1", "PYTHON": sys.executable}
    script = str(ROOT / "deploy" / "install.sh")
    subprocess.run(["sh", script, "build", str(ROOT), str(root / "dist")], env=env, check=True, cwd=root)
    subprocess.run(["sh", script, "install", str(root / "dist"), str(root / "venv" / "bin" / "python")],
                   env=env, check=True, cwd=root)
    (root / "site-packages-added").write_text("\n".join(sorted(set(os.listdir(site)) - before)))
    return root


def run_in(folder: Path, venv: Path, *argv: str) -> subprocess.CompletedProcess:
    """A command of the venv in `folder`, with nothing of the checkout on its path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'venv' / 'bin'}:{env['PATH']}"
    return subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True)


def test_site_packages_gains_one_package_and_its_dist_info(venv: Path) -> None:
    added = (venv / "site-packages-added").read_text().split()
    assert added == ["gbsweep", f"gbsweep-{gbsweep.__version__}.dist-info"]


def test_the_installed_package_is_the_wheel_s_with_its_space_file(venv: Path, tmp_path: Path) -> None:
    found = run_in(tmp_path, venv, "python", "-c", "import gbsweep; print(gbsweep.__file__)")
    assert found.returncode == 0, found.stderr
    package = Path(found.stdout.strip()).parent
    assert package.is_relative_to(venv / "venv")
    assert (package / "search_space.yaml").read_text() == (ROOT / "search_space.yaml").read_text()


def test_version_from_the_console_script_and_python_m(venv: Path, tmp_path: Path) -> None:
    for argv in (["sweep", "--version"], ["python", "-m", "gbsweep", "--version"]):
        result = run_in(tmp_path, venv, *argv)
        assert (result.returncode, result.stdout) == (0, f"sweep (gbsweep) {gbsweep.__version__}\n"), argv


def test_a_sweep_best_and_validate_in_an_empty_folder(venv: Path, tmp_path: Path) -> None:
    validated = run_in(tmp_path, venv, "sweep", "validate")
    assert (validated.returncode, validated.stdout) == (0, "ok\n"), validated.stderr
    ran = run_in(tmp_path, venv, "sweep", "run", "-q", "--n-trials", "2", "--n-jobs", "1")
    assert ran.returncode == 0, ran.stderr
    exported = json.loads(ran.stdout)
    shipped = yaml.safe_load((ROOT / "search_space.yaml").read_text())
    assert exported["study"] == shipped["study_name"]
    assert set(shipped["params"]) <= set(exported["params"])
    best = run_in(tmp_path, venv, "sweep", "best")
    assert best.returncode == 0, best.stderr
    assert json.loads(best.stdout) == exported
    assert {"optuna.journal", "mlflow.db"} <= {path.name for path in tmp_path.iterdir()}


def test_the_job_runs_the_image_the_dockerfile_builds_with_the_wheel_s_steps() -> None:
    """No Docker engine here: the image's recipe is held to the steps the tests above run."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    job = yaml.safe_load((ROOT / "deploy" / "sweep-workers.yaml").read_text())
    container = job["spec"]["template"]["spec"]["containers"][0]
    image = f"registry.example.com/gbsweep:{gbsweep.__version__}"
    assert container["image"] == image
    assert f"docker build -t {image} ." in dockerfile
    assert "command" not in container and container["args"][0] == "worker"  # after the entry point
    assert re.search(r"^ENTRYPOINT \[\"sweep\"\]$", dockerfile, re.MULTILINE)
    assert re.search(r"^FROM python:3\.\d+-slim", dockerfile, re.MULTILINE)
    assert "sh deploy/install.sh build /src /dist" in dockerfile
    assert "sh /tmp/install.sh install /dist python" in dockerfile
    user = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    assert user and user[-1] not in ("root", "0")
