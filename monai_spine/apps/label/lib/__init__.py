"""Tasks of the monai-spine MONAI Label app (``core``, ``models``, ``clicks``, ``labels``, ``training`` and ``uploads``
need no MONAI Label; the rest wrap them for the server)."""

from __future__ import annotations

__all__: list[str] = []
