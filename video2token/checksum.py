"""SHA-256 of files: tokenizer weights, store sources and release folders are identified by it."""
from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks (weights files are hundreds of MB)."""
    return _digest(path)[1]


def file_fingerprint(path: str | os.PathLike) -> str:
    """"BYTES:SHA256" of a file's content, in one streamed read: the same video wherever it was copied to."""
    size, digest = _digest(path)
    return f"{size}:{digest}"


def _digest(path: str | os.PathLike) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()
