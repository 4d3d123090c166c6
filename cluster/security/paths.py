"""Server-side paths a client names (Backup's destination, LoadTariffs' folder) stay under a root.

A client of Backup once wrote account databases into /etc; LoadTariffs read
any folder of the server. :func:`resolve_under` admits a client's path only
if it lies inside the configured root once every symbolic link is followed.
Its refusal reads the same whether the path exists or not, is a link, or is
a folder or a file: the client learns nothing of the server's filesystem.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

__all__ = ["PathRefused", "resolve_under"]

_SHOWN_CHARS_MAX: Final = 200


class PathRefused(ValueError):
    """Raised by :func:`resolve_under` for a path that is empty, has a NUL or a ``..``
    part, or resolves outside the root; the gateway answers it INVALID_ARGUMENT."""


def resolve_under(root: Path, given: str | os.PathLike[str], *, what: str = "path") -> Path:
    """The absolute, resolved form of ``given`` if it lies inside ``root`` (or is ``root``).

    A relative ``given`` is taken relative to ``root``; an absolute one must
    lie under it. Any ``..`` part is refused outright (no client needs one),
    and symbolic links are followed, in ``root`` itself too, so a link
    pointing out is refused. The path need not exist: a backup destination
    usually does not yet. ``what`` names the path in the message
    (``"backup destination"``).

    ``root`` must exist (a configuration error otherwise: ``OSError``, not a
    refusal). The check is made when called: write to the returned path, and
    create what you write with ``exist_ok=False``, so that a link planted
    under the root between check and write is not followed silently.
    """
    text = os.fspath(given)
    if not text or "\x00" in text:
        raise PathRefused(f"{what}: must be a non-empty path without NUL characters")
    shown = text if len(text) <= _SHOWN_CHARS_MAX else text[:_SHOWN_CHARS_MAX] + "…"
    refused = PathRefused(f"{what}: {shown!r} is outside the {what} root configured on the server")
    candidate = Path(text)
    if ".." in candidate.parts:
        raise refused
    base = root.resolve(strict=True)
    try:
        # An absolute candidate replaces base here; resolve follows every link that exists.
        resolved = (base / candidate).resolve(strict=False)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python 3.11)
        raise refused from None
    if not resolved.is_relative_to(base):
        raise refused
    return resolved
