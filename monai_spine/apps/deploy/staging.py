"""All-or-nothing output folder: write into a hidden staging folder, then move its files into place.

The deploy application never leaves partial output. Where the staging folder lives depends on
whether the output folder ``OUT`` exists:

* ``OUT`` exists (the usual case in a MONAI Application Package, where ``OUT`` is a mounted
  volume, and on Kubernetes / NFS): the staging folder is **inside** it, ``OUT/.monai-spine-staging-XXXX``.
  It is then on ``OUT``'s own file system, so moving the files into place is a rename even when
  ``OUT`` is a mount point, and the parent of ``OUT`` need not be writable.
* ``OUT`` does not exist: the staging folder is beside it, ``<parent>/.<OUT name>.staging-XXXX``,
  and the commit renames it to ``OUT`` (one rename: the folder appears complete).

Should a rename still cross file systems (``EXDEV``: something else mounted below ``OUT``), the
file is copied into a hidden temporary file beside its destination, renamed over it, and the
staged copy removed; a reader never sees a half-written file.

:meth:`StagedOutput.commit` moves the files only after the run completed; on failure
:meth:`StagedOutput.discard` removes the staging folder and ``OUT`` is left as it was (absent when
it did not exist, otherwise untouched but for the removed staging folder).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["STAGING_PREFIX", "StagedOutput", "move_file"]

#: Name prefix of the staging folder created inside an existing output folder.
STAGING_PREFIX = ".monai-spine-staging-"


def move_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Move ``src`` to ``dst`` (replacing it): a rename, or copy + rename when they are on different file systems.

    Returns:
        ``dst`` as a Path.

    Raises:
        OSError: the move failed (``dst`` is then left as it was).
    """
    src, dst = Path(src), Path(dst)
    try:
        os.replace(src, dst)
        return dst
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    src.unlink()
    return dst


class StagedOutput:
    """A staging folder for ``out_dir`` (inside it when it exists, beside it otherwise).

    Args:
        out_dir: the final output folder (need not exist).

    Attributes:
        path: the staging folder the application writes into.
        out_dir: the final output folder (absolute).
        inside: True when :attr:`path` is inside :attr:`out_dir`.

    Raises:
        NotADirectoryError: ``out_dir`` exists and is not a folder.
        OSError: the staging folder cannot be created (the folder is not writable).
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir).absolute()
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise NotADirectoryError(f"output {self.out_dir} exists and is not a folder")
        self.inside = self.out_dir.is_dir()
        if self.inside:
            where, prefix = self.out_dir, STAGING_PREFIX
        else:
            self.out_dir.parent.mkdir(parents=True, exist_ok=True)
            where, prefix = self.out_dir.parent, f".{self.out_dir.name}.staging-"
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=where))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.path, 0o777 & ~umask)  # mkdtemp makes it private; OUT gets the usual permissions

    def commit(self) -> list[Path]:
        """Move every staged file into ``out_dir`` (created; same names replaced) and remove the staging folder.

        Returns:
            the final paths, sorted.
        """
        if not self.inside and not self.out_dir.exists():
            os.replace(self.path, self.out_dir)  # same parent, same file system: one rename
            return sorted(p for p in self.out_dir.rglob("*") if p.is_file())
        self.out_dir.mkdir(parents=True, exist_ok=True)
        moved = []
        for src in sorted(self.path.rglob("*")):
            if src.is_file():
                dst = self.out_dir / src.relative_to(self.path)
                dst.parent.mkdir(parents=True, exist_ok=True)
                moved.append(move_file(src, dst))
        shutil.rmtree(self.path, ignore_errors=True)
        return sorted(moved)

    def discard(self) -> None:
        """Remove the staging folder and everything in it."""
        shutil.rmtree(self.path, ignore_errors=True)
