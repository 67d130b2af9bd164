"""All-or-nothing output folder: write into a hidden staging folder, then move its files into place.

The deploy application never leaves partial output: its operators write into
``<parent of OUT>/.<OUT name>.staging-XXXX`` (same file system, so moving is a rename), and
:meth:`StagedOutput.commit` moves the files into ``OUT`` only after the run completed. On failure
:meth:`StagedOutput.discard` removes the staging folder; ``OUT`` is then left as it was (absent when
it did not exist, otherwise untouched).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["StagedOutput"]


class StagedOutput:
    """A staging folder beside ``out_dir``.

    Args:
        out_dir: the final output folder (need not exist).

    Raises:
        NotADirectoryError: ``out_dir`` exists and is not a folder.
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir).absolute()
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise NotADirectoryError(f"output {self.out_dir} exists and is not a folder")
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.staging-", dir=self.out_dir.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.path, 0o777 & ~umask)  # mkdtemp makes it private; OUT gets the usual permissions

    def commit(self) -> list[Path]:
        """Move every staged file into ``out_dir`` (created; same names replaced) and remove the staging folder.

        Returns:
            the final paths, sorted.
        """
        if not self.out_dir.exists():
            os.replace(self.path, self.out_dir)  # one rename: the folder appears complete
            return sorted(p for p in self.out_dir.rglob("*") if p.is_file())
        moved = []
        for src in sorted(self.path.rglob("*")):
            if src.is_file():
                dst = self.out_dir / src.relative_to(self.path)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
                moved.append(dst)
        shutil.rmtree(self.path, ignore_errors=True)
        return moved

    def discard(self) -> None:
        """Remove the staging folder and everything in it."""
        shutil.rmtree(self.path, ignore_errors=True)
