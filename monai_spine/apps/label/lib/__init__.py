"""Tasks of the monai-spine MONAI Label app (``core`` needs no MONAI Label; the rest wrap it for the server)."""

from __future__ import annotations

__all__: list[str] = []
