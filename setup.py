"""Build step of candleflow: compiles the hot paths of the features engine and of ingest.

Everything else about the package is in pyproject.toml. The compiled modules
(``candleflow.core.indicators`` and ``candleflow.core.steps``: the streaming
features engine; ``candleflow.exchanges.fastpath``: the per-trade ingest path) are the same
Python sources built as C extensions: same operations in the same order, so
bit-identical results, several times faster. The ``.py`` files stay the
source of truth; Python imports the extension when it is there and the
``.py`` otherwise, so:

- ``CANDLEFLOW_PURE_PYTHON=1`` at install time skips the compilation;
- a failed compilation (no C compiler, unsupported platform) is reported and
  the package installs as pure Python;
- an editable install (``pip install -e .``, ``make install``) builds the
  extensions next to the sources in ``src/``; ``make install`` rebuilds them
  whenever those sources change, so a stale build never shadows an edited file.

Ingest's replay also has a Rust parser of the usual Kraken and Binance trade
frames (``native/``, built as ``candleflow.exchanges._native`` with
setuptools-rust and PyO3): it goes from a frame's bytes to the encoded Trade
records without Python objects in between. It is built when a Rust toolchain
(cargo) is there and skipped otherwise, or with ``CANDLEFLOW_PURE_PYTHON=1``;
without it, ingest gives the same records through the mypyc fast path.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

COMPILED_MODULES = ["src/candleflow/core/indicators.py", "src/candleflow/core/steps.py",
                    "src/candleflow/exchanges/fastpath.py"]  # the ingest hot path
GROUP = "candleflow_core"  # mypyc's name for the shared library of the compiled modules
# What an in-place build leaves in src/: an extension per module and their shared library.
_BUILT_STEMS = [path.removesuffix(".py") for path in COMPILED_MODULES] + [f"src/{GROUP}__mypyc"]
INPLACE_BUILDS = [f"{stem}.*.{ext}" for stem in _BUILT_STEMS for ext in ("so", "pyd")]
NATIVE_MODULE = "candleflow.exchanges._native"  # native/: ingest's Rust frame parser and dedup window
NATIVE_INPLACE_BUILDS = [f"src/{NATIVE_MODULE.replace('.', '/')}.*.{ext}" for ext in ("so", "pyd")]


def remove_inplace_builds(patterns: list[str] = INPLACE_BUILDS) -> None:
    """Delete a compiled build left in src/ by an earlier editable install: it would shadow the sources."""
    root = Path(__file__).resolve().parent
    for pattern in patterns:
        for path in root.glob(pattern):
            path.unlink()


class OptionalBuildExt(build_ext):
    """All the compiled modules or none: a module without its shared library would not import."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # compiler missing or failing: the pure-Python package still works
            for path in self.get_outputs():
                Path(path).unlink(missing_ok=True)
            remove_inplace_builds()
            print(f"candleflow: compiling the hot paths failed ({exc}); installing them as pure Python "
                  "(same results, slower)", file=sys.stderr)
            self.extensions = []


def pure_python() -> bool:
    return os.environ.get("CANDLEFLOW_PURE_PYTHON", "").strip() not in ("", "0")


def compiled_extensions() -> list:
    if pure_python():
        remove_inplace_builds()
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("candleflow: mypy (mypyc) is not installed; installing the hot paths as pure Python",
              file=sys.stderr)
        remove_inplace_builds()
        return []
    # The compiled modules import project modules that import third-party packages (msgspec, httpx,
    # ...), which pip may not have installed yet when it builds this package: mypy reads those
    # imports as Any instead of failing, and reports errors only in the compiled modules.
    options = ["--ignore-missing-imports", "--follow-imports=silent"]
    extensions = mypycify([*options, *COMPILED_MODULES], opt_level="3", group_name=GROUP)
    if sys.platform != "win32":
        for ext in extensions:
            # No fused multiply-add, which compilers emit by default on some platforms (aarch64):
            # a*b+c rounded once would differ in the last bit from pure Python.
            ext.extra_compile_args = [*ext.extra_compile_args, "-ffp-contract=off"]  # the list is shared
    return extensions


def rust_extensions() -> list:
    if pure_python():
        remove_inplace_builds(NATIVE_INPLACE_BUILDS)
        return []
    try:
        from setuptools_rust import Binding, RustExtension
    except ImportError:
        print("candleflow: setuptools-rust is not installed; installing ingest without its Rust parser "
              "(same results, slower)", file=sys.stderr)
        remove_inplace_builds(NATIVE_INPLACE_BUILDS)
        return []
    # optional: without cargo, or if the build fails, the package installs without it (and says so).
    # --locked: the crates of native/Cargo.lock, nothing newer. debug=False: an editable install
    # would otherwise build it unoptimised.
    return [RustExtension(NATIVE_MODULE, path="native/Cargo.toml", binding=Binding.PyO3, optional=True,
                          debug=False, args=["--locked"])]


def commands() -> dict:
    """build_ext that falls back to pure Python, and build_rust that first deletes the previous
    in-place build: when the new one fails, ingest falls back to Python rather than to a stale build."""
    try:
        from setuptools_rust import build_rust
    except ImportError:
        return {"build_ext": OptionalBuildExt}

    class FreshBuildRust(build_rust):
        def run(self) -> None:
            remove_inplace_builds(NATIVE_INPLACE_BUILDS)
            super().run()

    return {"build_ext": OptionalBuildExt, "build_rust": FreshBuildRust}


setup(ext_modules=compiled_extensions(), rust_extensions=rust_extensions(), cmdclass=commands())
