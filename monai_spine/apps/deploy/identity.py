"""Who wrote a report: the installation's Device Observer UID and the weight hashes of the models (no SDK import).

A DICOM SR names its observer device by a UID that should identify one installation, so that a
hospital can tell which machine (and, with the algorithm parameters, which weights) produced a
measurement. :func:`device_observer_uid` takes, first found:

1. ``$MONAI_SPINE_DEVICE_UID``: the UID the site assigns to this installation (a MAP passes it with
   the runner's environment); it must be a valid DICOM UID (digits and dots, at most 64 characters);
2. a UID derived from ``/etc/machine-id`` (stable for one host, different between hosts);
3. a UID derived from the host name and the network card's MAC address.

The derived UIDs are ``2.25.<decimal>`` UIDs of a name-based (SHA-1, version 5) UUID of that text,
never the same constant on every installation. Containers without ``/etc/machine-id``
may get a new host name per run; set ``MONAI_SPINE_DEVICE_UID`` there.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path

__all__ = ["DEVICE_UID_ENV", "MACHINE_ID_FILE", "sha256_file", "device_observer_uid"]

#: Environment variable holding the installation's Device Observer UID.
DEVICE_UID_ENV = "MONAI_SPINE_DEVICE_UID"
#: The host's machine id (systemd); hashed, never written into a report.
MACHINE_ID_FILE = Path("/etc/machine-id")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks).

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def device_observer_uid(env: Mapping[str, str] | None = None,
                        machine_id_file: str | os.PathLike = MACHINE_ID_FILE) -> tuple[str, str]:
    """The installation's Device Observer UID and where it came from (rules in the module docstring).

    Args:
        env: environment to read (default ``os.environ``).
        machine_id_file: the machine id file (tests point it elsewhere).

    Returns:
        ``(uid, source)`` with ``source`` one of ``$MONAI_SPINE_DEVICE_UID``, the machine id file's
        path, ``host name and MAC address``.

    Raises:
        ValueError: ``$MONAI_SPINE_DEVICE_UID`` is set but not a valid DICOM UID (the message names it).
    """
    env = os.environ if env is None else env
    value = str(env.get(DEVICE_UID_ENV, "")).strip()
    if value:
        if len(value) > 64 or not _UID.match(value):
            raise ValueError(
                f"{DEVICE_UID_ENV}={value!r} is not a DICOM UID (digits and dots, no leading zeros, at most 64 characters)"
            )
        return value, f"${DEVICE_UID_ENV}"
    try:
        machine_id = Path(machine_id_file).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        machine_id = ""
    if machine_id:
        return _derived_uid(machine_id), str(machine_id_file)
    return _derived_uid(f"{socket.gethostname()}|{uuid.getnode():012x}"), "host name and MAC address"


def _derived_uid(text: str) -> str:
    """``2.25.<decimal of a name-based UUID>`` (ISO/IEC 9834-8): the same text gives the same UID."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, f'monai-spine device observer|{text}').int}"
