"""The built wheel: every module ships, adapters only as bso_snn.adapters, the console script, bounded torch."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the sources (keeps build/ and egg-info out of the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("bso_snn", "adapters"):
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    dist = tmp_path_factory.mktemp("dist")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(dist),
        str(src),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (whl,) = dist.glob("bso_snn-*.whl")
    return whl


def _names(whl: Path) -> set[str]:
    with zipfile.ZipFile(whl) as z:
        return set(z.namelist())


def _dist_info(whl: Path, name: str) -> str:
    with zipfile.ZipFile(whl) as z:
        (path,) = [n for n in z.namelist() if n.endswith(f".dist-info/{name}")]
        return z.read(path).decode()


def test_every_source_module_ships(wheel):
    names = _names(wheel)
    sources = [*(REPO / "bso_snn").rglob("*.py"), *(REPO / "bso_snn").rglob("csrc/*.c*")]  # kernels too
    expected = {f"bso_snn/{p.relative_to(REPO / 'bso_snn')}" for p in sources}
    expected |= {
        f"bso_snn/adapters/{p.relative_to(REPO / 'adapters')}" for p in (REPO / "adapters").rglob("*.py")
    }
    missing = sorted(expected - names)
    assert not missing, (
        f"not in the wheel (add the package to [tool.setuptools] packages, or the files to "
        f"[tool.setuptools.package-data], in pyproject.toml): {missing}"
    )


def test_adapters_ship_only_inside_bso_snn(wheel):
    names = _names(wheel)
    assert "bso_snn/adapters/__init__.py" in names
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"bso_snn"}


def test_console_script_and_bounded_requirements(wheel):
    assert "bso-snn = bso_snn.cli:main" in _dist_info(wheel, "entry_points.txt")
    meta = _dist_info(wheel, "METADATA")
    requires = [
        line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")
    ]
    (torch_req,) = [r for r in requires if r.startswith("torch")]
    assert "<" in torch_req, (
        f"torch must be bounded above so an upgrade never swaps in another build: {torch_req}"
    )
    assert not any(r.startswith(("torchvision", "torchaudio")) for r in requires)
    extras = {
        line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Provides-Extra:")
    }
    assert {"spikingjelly", "snntorch", "dev"} <= extras


def test_installed_wheel_imports_and_bare_adapters_does_not(wheel, tmp_path):
    site = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import importlib.util, bso_snn, bso_snn.adapters, bso_snn.cli, bso_snn.data\n"
        "assert bso_snn.__file__.startswith(sys.argv[1]), bso_snn.__file__\n"
        "assert bso_snn.adapters.__file__.startswith(sys.argv[1]), bso_snn.adapters.__file__\n"
        "spec = importlib.util.find_spec('adapters')\n"
        "print('bare adapters:', spec.origin if spec else None)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(site)], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    origin = proc.stdout.strip().split("bare adapters: ")[1]
    assert origin == "None" or not origin.startswith((str(REPO), str(site))), origin
