"""IDX files (the MNIST / Fashion-MNIST format), read with ``numpy.frombuffer``.

An IDX file is a big-endian header -- two zero bytes, a type code (``0x08`` = uint8), the
number of dimensions ``d`` -- then ``d`` big-endian uint32 sizes, then the data in C
order. Files may be gzip-compressed (``.gz``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib

import numpy as np

from geomkit.errors import DataError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# (path, size, mtime_ns) -> md5 hex digest of the uncompressed payload, per process.
_MD5_CACHE: dict[tuple[str, int, int], str] = {}


def read_bytes(path: str) -> bytes:
    """The uncompressed bytes of ``path`` (gunzipped when it ends in ``.gz``).

    Raises:
        DataError: the file is unreadable or not valid gzip.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if path.endswith(".gz"):
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path} is not a valid gzip file ({e}); replace the file") from None
    return raw


def payload_md5(path: str, payload: bytes) -> str:
    """MD5 of the uncompressed ``payload`` read from ``path``, cached per process.

    The cache key is the file's path, size and modification time, so a replaced file
    is hashed again.
    """
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    digest = _MD5_CACHE.get(key)
    if digest is None:
        digest = hashlib.md5(payload, usedforsecurity=False).hexdigest()
        _MD5_CACHE[key] = digest
    return digest


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """Parse IDX bytes into an array (a read-only view of ``data``, no copy).

    Raises:
        DataError: bad magic number, unknown type code or wrong length.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{name} is not an IDX file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in _DTYPES:
        raise DataError(f"{name} has unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name} is truncated (incomplete IDX header)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_DTYPES[code])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"{name} has {len(data)} bytes but its IDX header {tuple(shape)} needs {expected}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
