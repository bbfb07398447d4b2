"""Build the slim XGBoost Lambda layer into ``build/layers/xgboost/<arch>/python`` (``--kind arrow``:
the updater's pyarrow layer from ``layers/requirements-arrow.txt`` into ``build/layers/arrow/``).

Usage (from the repo root)::

    uv run python layers/build.py --arch x86_64          # cached: no-op when inputs are unchanged
    uv run python layers/build.py --arch arm64 --force --zip build/layers/xgboost-arm64.zip

Steps: install the pinned wheels of ``layers/requirements.txt`` for the Lambda platform (manylinux,
CPython 3.13, binary wheels only, no dependency resolution), add the SciPy stand-in of
``layers/scipy_shim``, prune what Lambda never imports (tests, type stubs, headers, f2py, xgboost's
dask/spark/testing helpers, installer metadata), precompile bytecode with hash-based ``.pyc`` (the
layer is read-only at ``/opt``, so without them every cold start recompiles), then record the sizes in
``build-info.json``. The result is reused while ``requirements.txt``, the shim and this file are
unchanged; the CDK app calls ``build_layer`` from its local bundling.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

Arch = Literal["x86_64", "arm64"]
Installer = Literal["uv", "pip"]
LayerKind = Literal["xgboost", "arrow"]

LAYERS_DIR = Path(__file__).resolve().parent
REPO_ROOT = LAYERS_DIR.parent
REQUIREMENTS = LAYERS_DIR / "requirements.txt"
# The updater's second layer: pyarrow alone, to write the event lake (docs/infra.md: why a layer of
# its own). numpy comes from the xgboost layer, which the updater has too.
ARROW_REQUIREMENTS = LAYERS_DIR / "requirements-arrow.txt"
SHIM_DIR = LAYERS_DIR / "scipy_shim"
DEFAULT_OUT_ROOT = REPO_ROOT / "build" / "layers" / "xgboost"
ARROW_OUT_ROOT = REPO_ROOT / "build" / "layers" / "arrow"
BUILD_INFO = "build-info.json"
PYTHON_VERSION = "3.13"
# Lambda's python3.13 runtime is Amazon Linux 2023 (glibc 2.34): any manylinux wheel up to 2_34 runs.
MANYLINUX = "2_34"
_MACHINE: dict[Arch, str] = {"x86_64": "x86_64", "arm64": "aarch64"}

# Relative to site-packages. Directories named like PRUNE_DIR_NAMES are removed wherever they are.
PRUNE_PATHS = (
    "bin",
    "numpy/f2py",
    "numpy/_pyinstaller",
    "numpy/_core/include",
    "numpy/random/_examples",
    "xgboost/dask",
    "xgboost/spark",
    "xgboost/testing",
)
# pyarrow parts the lake writer never loads: Flight (RPC), cloud filesystems other than S3's
# stubs, ORC, the C++ test module, headers and Cython sources, and the two extra copies of
# libarrow_python (the wheel ships the soname three times as files; only .so.<major> is loaded).
ARROW_PRUNE_PATHS = (
    "bin",
    "pyarrow/include",
    "pyarrow/src",
    "pyarrow/libarrow_flight.so.2500",
    "pyarrow/libarrow_python_flight.so",
    "pyarrow/libarrow_python_flight.so.2500",
    "pyarrow/libarrow_python_flight.so.2500.1.0",
    "pyarrow/libarrow_python.so",
    "pyarrow/libarrow_python.so.2500.1.0",
    "pyarrow/libarrow_python_parquet_encryption.so",
    "pyarrow/libarrow_python_parquet_encryption.so.2500.1.0",
    "pyarrow/_flight.cpython-313-x86_64-linux-gnu.so",
    "pyarrow/_flight.cpython-313-aarch64-linux-gnu.so",
    "pyarrow/_pyarrow_cpp_tests.cpython-313-x86_64-linux-gnu.so",
    "pyarrow/_pyarrow_cpp_tests.cpython-313-aarch64-linux-gnu.so",
    "pyarrow/_azurefs.cpython-313-x86_64-linux-gnu.so",
    "pyarrow/_azurefs.cpython-313-aarch64-linux-gnu.so",
    "pyarrow/_gcsfs.cpython-313-x86_64-linux-gnu.so",
    "pyarrow/_gcsfs.cpython-313-aarch64-linux-gnu.so",
    "pyarrow/_hdfs.cpython-313-x86_64-linux-gnu.so",
    "pyarrow/_hdfs.cpython-313-aarch64-linux-gnu.so",
    "pyarrow/_orc.cpython-313-x86_64-linux-gnu.so",
    "pyarrow/_orc.cpython-313-aarch64-linux-gnu.so",
    "pyarrow/_dataset_orc.cpython-313-x86_64-linux-gnu.so",
    "pyarrow/_dataset_orc.cpython-313-aarch64-linux-gnu.so",
)
PRUNE_DIR_NAMES = frozenset({"tests", "__pycache__"})
PRUNE_DIR_SUFFIXES = ("-stubs",)  # type-stub-only distributions, e.g. wrapt-stubs
PRUNE_SUFFIXES = (".pyi", ".pyx", ".pxd", ".pxi", ".c", ".h")
# Installer bookkeeping nobody reads at run time; METADATA (importlib.metadata) and licenses stay.
PRUNE_DIST_INFO = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"})


@dataclass(frozen=True)
class LayerBuild:
    """Where a built layer is and what it weighs."""

    arch: str
    fingerprint: str
    layer_dir: str  # contains python/
    unzipped_bytes: int
    zipped_bytes: int
    files: int

    @property
    def python_dir(self) -> Path:
        return Path(self.layer_dir) / "python"


def requirements_for(kind: LayerKind) -> Path:
    return ARROW_REQUIREMENTS if kind == "arrow" else REQUIREMENTS


def default_out_root(kind: LayerKind) -> Path:
    return ARROW_OUT_ROOT if kind == "arrow" else DEFAULT_OUT_ROOT


def fingerprint(arch: Arch, kind: LayerKind = "xgboost") -> str:
    """Hash of every input that changes the layer's content."""
    digest = hashlib.sha256(f"{arch}|{PYTHON_VERSION}|{MANYLINUX}|{sys.version_info[:2]}".encode())
    shim = sorted(SHIM_DIR.rglob("*.py")) if kind == "xgboost" else []
    inputs = [requirements_for(kind), Path(__file__).resolve(), *shim]
    for path in inputs:
        digest.update(path.relative_to(LAYERS_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def layer_dir_for(arch: Arch, out_root: Path = DEFAULT_OUT_ROOT) -> Path:
    return out_root / arch


def read_build_info(layer_dir: Path) -> LayerBuild | None:
    info = layer_dir / BUILD_INFO
    if not info.is_file() or not (layer_dir / "python").is_dir():
        return None
    return LayerBuild(**json.loads(info.read_text(encoding="utf-8")))


def build_layer(
    arch: Arch = "x86_64",
    out_root: Path | None = None,
    *,
    force: bool = False,
    installer: Installer = "uv",
    kind: LayerKind = "xgboost",
) -> LayerBuild:
    """Build (or reuse) the ``kind`` layer for ``arch``; returns its location and sizes."""
    target = layer_dir_for(arch, out_root or default_out_root(kind))
    out_root = target.parent
    wanted = fingerprint(arch, kind)
    cached = None if force else read_build_info(target)
    if cached is not None and cached.fingerprint == wanted:
        return cached

    out_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{arch}-", dir=out_root))
    try:
        site = staging / "python"
        _install(site, arch, installer, kind)
        if kind == "xgboost":
            shutil.copytree(SHIM_DIR, site, dirs_exist_ok=True)
        prune(site, ARROW_PRUNE_PATHS if kind == "arrow" else PRUNE_PATHS)
        _compile(site)
        unzipped, files = _tree_size(site)
        build = LayerBuild(
            arch=arch,
            fingerprint=wanted,
            layer_dir=str(target),
            unzipped_bytes=unzipped,
            zipped_bytes=zip_layer(site, None),
            files=files,
        )
        (staging / BUILD_INFO).write_text(json.dumps(asdict(build), indent=2) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return build


def pip_command(site: Path, arch: Arch, installer: Installer, kind: LayerKind = "xgboost") -> list[str]:
    """The install command; both installers get the same platform and binary-only constraints."""
    machine = _MACHINE[arch]
    requirements = requirements_for(kind)
    if installer == "uv":
        uv = shutil.which("uv")
        if uv is None:
            raise RuntimeError("uv is not on PATH; install it or use --installer pip")
        return [
            uv, "pip", "install", "--quiet", "--no-deps", "--no-build", "--no-installer-metadata",
            "--no-compile-bytecode", "--python-version", PYTHON_VERSION,
            "--python-platform", f"{machine}-manylinux_{MANYLINUX}",
            "--target", str(site), "--requirement", str(requirements),
        ]  # fmt: skip
    platforms = [f"manylinux2014_{machine}", f"manylinux_2_28_{machine}", f"manylinux_{MANYLINUX}_{machine}"]
    return [
        sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--only-binary=:all:",
        "--implementation", "cp", "--python-version", PYTHON_VERSION,
        *(arg for platform in platforms for arg in ("--platform", platform)),
        "--no-compile", "--target", str(site), "--requirement", str(requirements),
    ]  # fmt: skip


def _install(site: Path, arch: Arch, installer: Installer, kind: LayerKind) -> None:
    subprocess.run(pip_command(site, arch, installer, kind), check=True, cwd=REPO_ROOT)


def prune(site: Path, paths: tuple[str, ...] = PRUNE_PATHS) -> None:
    """Remove from an installed site-packages what a Lambda never imports."""
    for rel in paths:
        path = site / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for path in sorted(site.rglob("*"), reverse=True):  # children before parents
        if path.is_dir() and (path.name in PRUNE_DIR_NAMES or path.name.endswith(PRUNE_DIR_SUFFIXES)):
            shutil.rmtree(path)
        elif path.is_file() and (
            path.suffix in PRUNE_SUFFIXES
            or (path.parent.name.endswith(".dist-info") and path.name in PRUNE_DIST_INFO)
        ):
            path.unlink()


def _compile(site: Path) -> None:
    """Unchecked-hash ``.pyc`` for CPython 3.13 (no mtime checks on the read-only ``/opt``).

    Skipped when this interpreter is not 3.13: its bytecode would be ignored by the runtime.
    """
    if f"{sys.version_info.major}.{sys.version_info.minor}" != PYTHON_VERSION:
        print(f"layer: skip bytecode, running Python {sys.version_info[:2]} not {PYTHON_VERSION}")
        return
    # A subprocess, not compileall.compile_dir(workers=0): its process pool must not fork the CDK
    # app (jsii kernel pipes) when this runs inside local bundling.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            "--invalidation-mode",
            "unchecked-hash",
            str(site),
        ],
        check=True,
    )


def _tree_size(root: Path) -> tuple[int, int]:
    sizes = [p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    return sum(sizes), len(sizes)


def zip_layer(site: Path, destination: Path | None) -> int:
    """Zip ``site`` as ``python/...`` (the layer layout); returns the zip size in bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = destination or Path(tmp) / "layer.zip"
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
            for file in sorted(p for p in site.rglob("*") if p.is_file()):
                archive.write(file, Path("python") / file.relative_to(site))
        return path.stat().st_size


def copy_tree(source: Path, destination: Path) -> None:
    """Hard-link ``source`` into ``destination`` when on one filesystem, else copy."""
    try:
        shutil.copytree(source, destination, copy_function=os.link, dirs_exist_ok=True)
    except OSError:
        shutil.copytree(source, destination, dirs_exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", choices=sorted(_MACHINE), default="x86_64")
    parser.add_argument("--kind", choices=["xgboost", "arrow"], default="xgboost")
    parser.add_argument("--out-root", type=Path, help="default: build/layers/<kind>")
    parser.add_argument("--installer", choices=["uv", "pip"], default="uv")
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache matches")
    parser.add_argument("--zip", type=Path, help="also write the layer zip here")
    args = parser.parse_args(argv)
    build = build_layer(args.arch, args.out_root, force=args.force, installer=args.installer, kind=args.kind)
    if args.zip:
        zip_layer(build.python_dir, args.zip)
    mib = 1024 * 1024
    summary = {
        **asdict(build),
        "unzipped_mib": round(build.unzipped_bytes / mib, 1),
        "zipped_mib": round(build.zipped_bytes / mib, 1),
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
