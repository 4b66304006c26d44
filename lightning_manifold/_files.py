"""Safe reading of ``.npy`` / ``.npz`` files that may come from elsewhere.

Every array header is read and checked (shape, dtype, memory order, and that the file really
holds the bytes it declares) *before* anything is allocated, so a 136-byte file whose header
claims 10^10 elements is refused instead of triggering a 74 GiB allocation; a link that leads
out of a store is refused instead of followed. Used by the trajectory store, the reference
embedding and the out-of-core sources. Nothing is ever unpickled.
"""

from __future__ import annotations

import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["NpyHeader", "SafeNpz", "check_inside", "load_npy", "npy_header", "read_npy_header"]

_NPZ_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP = b"PK\x05\x06"


@dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` header declares.

    Attributes:
        shape: array shape.
        dtype: element dtype (never an object dtype).
        fortran_order: whether the data is stored column-major.
        offset: bytes before the data (from the start of the file or archive member).
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int

    @property
    def nbytes(self) -> int:
        """Bytes of data the header declares (exact integer, no overflow)."""
        count = 1
        for s in self.shape:
            count *= s
        return count * self.dtype.itemsize


def read_npy_header(f: IO[bytes], name: str, *, error: type[Exception] = ValueError) -> NpyHeader:
    """Parse the header of the ``.npy`` data at the current position of ``f``.

    Raises:
        error: naming ``name``: not a ``.npy`` header, or an object (pickled) dtype.
    """
    start = f.tell() if f.seekable() else 0
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:  # pragma: no cover - read_magic accepts only the versions above today
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, EOFError, SyntaxError, TypeError, OverflowError) as err:
        raise error(
            f"'{name}' is not a valid .npy array (truncated or corrupt header: {err})"
        ) from None
    if dtype.hasobject:
        raise error(f"'{name}' holds Python objects (dtype {dtype}); only numeric arrays are read")
    offset = (f.tell() - start) if f.seekable() else f.tell()
    return NpyHeader(tuple(int(s) for s in shape), np.dtype(dtype), bool(fortran), int(offset))


def _check_header(
    header: NpyHeader,
    name: str,
    *,
    shape: tuple[int | None, ...] | None,
    dtype: Any,
    kinds: str | None,
    error: type[Exception],
) -> None:
    """Compare a header with what the caller declares (``None`` entries of ``shape`` are free)."""
    if shape is not None and (
        len(header.shape) != len(shape)
        or any(e is not None and e != s for e, s in zip(shape, header.shape))
    ):
        want = "(" + ", ".join("?" if e is None else str(e) for e in shape) + ")"
        raise error(
            f"'{name}' must hold an array of shape {want}, its header declares {header.shape}"
        )
    if dtype is not None and header.dtype != np.dtype(dtype):
        raise error(
            f"'{name}' must hold {np.dtype(dtype)} values, its header declares {header.dtype}"
        )
    if kinds is not None and header.dtype.kind not in kinds:
        raise error(f"'{name}' has the wrong element type: its header declares {header.dtype}")


def check_inside(root: Path, path: Path, *, error: type[Exception] = ValueError) -> Path:
    """Return ``path`` if it does not lead out of ``root`` through a symbolic link.

    ``path`` is ``root / relative``; only links below ``root`` are checked (``root`` itself may
    live behind links). Costs one ``lstat`` when ``path`` is not a link.

    Raises:
        error: ``path`` is a link (or lies below one) that resolves outside ``root``.
    """
    try:
        rel = path.relative_to(root)
    except ValueError:
        raise error(f"'{path}' is not inside '{root}'") from None
    probe = root
    for part in rel.parts:
        probe = probe / part
        try:
            is_link = stat.S_ISLNK(os.lstat(probe).st_mode)
        except FileNotFoundError:
            return path
        if is_link:
            target = probe.resolve()
            if not target.is_relative_to(root.resolve()):
                raise error(
                    f"'{probe}' is a symbolic link that leads out of '{root}' (to '{target}'); "
                    "links out of a store are never followed"
                )
    return path


def npy_header(
    path: Path,
    *,
    shape: tuple[int | None, ...] | None = None,
    dtype: Any = None,
    kinds: str | None = None,
    error: type[Exception] = ValueError,
) -> NpyHeader:
    """The header of a ``.npy`` file, checked against the declared shape and dtype, then to be
    followed by all the data it declares.

    Args:
        path: the file.
        shape: expected shape; ``None`` entries accept any length.
        dtype: expected dtype (exact), or ``None``.
        kinds: accepted dtype kinds (e.g. ``"iu"``), or ``None``.
        error: the exception type raised for a bad file.

    Raises:
        error: naming the file: not a ``.npy`` file, object dtype, a header that does not match,
            or truncated data.
    """
    with open(path, "rb") as f:
        header = read_npy_header(f, str(path), error=error)
        size = os.fstat(f.fileno()).st_size
    _check_header(header, str(path), shape=shape, dtype=dtype, kinds=kinds, error=error)
    if size - header.offset < header.nbytes:
        raise error(
            f"'{path}' is truncated: its header declares {header.shape} {header.dtype} "
            f"({header.nbytes} bytes of data), the file holds {max(size - header.offset, 0)}"
        )
    return header


def load_npy(
    path: Path,
    *,
    shape: tuple[int | None, ...] | None = None,
    dtype: Any = None,
    kinds: str | None = None,
    mmap: bool = False,
    root: Path | None = None,
    error: type[Exception] = ValueError,
) -> np.ndarray:
    """Read a ``.npy`` file after checking its header against the declared shape and dtype.

    Args:
        path: the file.
        shape: expected shape; ``None`` entries accept any length.
        dtype: expected dtype (exact), or ``None``.
        kinds: accepted dtype kinds (e.g. ``"iu"``), or ``None``.
        mmap: return a read-only memory map instead of reading the data.
        root: refuse a link below ``root`` that leads out of it.
        error: the exception type raised for a bad file.

    Raises:
        FileNotFoundError: no such file.
        error: naming the file: a link out of ``root``, a bad or truncated file, or a header that
            does not match.
    """
    path = Path(path)
    if root is not None:
        check_inside(root, path, error=error)
    header = npy_header(path, shape=shape, dtype=dtype, kinds=kinds, error=error)
    order = "F" if header.fortran_order else "C"
    if mmap and header.nbytes > 0:
        return np.memmap(
            path,
            dtype=header.dtype,
            mode="r",
            offset=header.offset,
            shape=header.shape,
            order=order,
        )
    out = np.empty(header.shape, dtype=header.dtype, order=order)
    with open(path, "rb", buffering=0) as f:
        f.seek(header.offset)
        _read_into(f, out, str(path), error)
    return out


def _read_into(f: IO[bytes], out: np.ndarray, name: str, error: type[Exception]) -> None:
    view = memoryview(out.reshape(-1, order="A").view(np.uint8))
    done = 0
    while done < view.nbytes:
        n = f.readinto(view[done:])  # type: ignore[attr-defined]
        if not n:
            raise error(f"'{name}' is truncated: {done} of {view.nbytes} data bytes present")
        done += n


class SafeNpz:
    """A ``.npz`` archive opened without trusting it: no pickle, no hidden allocation.

    Every member's header is read on opening; a member must be stored uncompressed (as
    ``np.savez`` writes it) and hold exactly the bytes its header declares, so nothing read can
    be larger than the file itself. Use as a context manager.

    Args:
        path: the archive.
        what: what the file should be, for error messages (``"a reference file"``).

    Attributes:
        headers: member name (without ``.npy``) -> :class:`NpyHeader`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file: empty, truncated, not an npz archive, a compressed member,
            a member that is not a ``.npy`` array, or a header that claims more data than held.
    """

    def __init__(self, path: Path, *, what: str = "an npz archive") -> None:
        self.path = Path(path)
        self._what = what
        with open(self.path, "rb") as f:
            head = f.read(4)
        if not head:
            raise ValueError(f"'{self.path}' is not {what}: the file is empty")
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
            why = "truncated (the zip directory is missing)" if head == _NPZ_MAGIC else None
            why = why or ("not an npz (zip) archive" if head != _EMPTY_ZIP else "corrupt")
            raise ValueError(f"'{self.path}' is not {what}: {why} ({err})") from None
        try:
            self.headers = self._read_headers()
        except BaseException:
            self._zip.close()
            raise

    def _bad(self, msg: str) -> ValueError:
        return ValueError(f"'{self.path}' is not {self._what}: {msg}")

    def _read_headers(self) -> dict[str, NpyHeader]:
        headers: dict[str, NpyHeader] = {}
        for info in self._zip.infolist():
            if not info.filename.endswith(".npy"):
                raise self._bad(f"member {info.filename!r} is not a .npy array")
            if info.compress_type != zipfile.ZIP_STORED:
                raise self._bad(
                    f"member {info.filename!r} is compressed ({info.file_size} bytes from "
                    f"{info.compress_size}); only uncompressed archives (np.savez) are read"
                )
            name = f"{self.path}:{info.filename}"
            try:
                with self._zip.open(info) as f:
                    header = read_npy_header(f, name)
            except (zipfile.BadZipFile, EOFError, OSError) as err:
                raise self._bad(
                    f"member {info.filename!r} is truncated or corrupt ({err})"
                ) from None
            if header.offset + header.nbytes != info.file_size:
                raise self._bad(
                    f"member {info.filename!r} declares {header.shape} {header.dtype} "
                    f"({header.nbytes} bytes) but holds {info.file_size - header.offset}"
                )
            headers[info.filename[: -len(".npy")]] = header
        return headers

    def check(
        self,
        key: str,
        *,
        shape: tuple[int | None, ...] | None = None,
        dtype: Any = None,
        kinds: str | None = None,
    ) -> NpyHeader:
        """The header of member ``key``, checked against the declared shape and dtype."""
        if key not in self.headers:
            raise self._bad(f"the array {key!r} is missing")
        header = self.headers[key]
        _check_header(
            header, f"{self.path}:{key}", shape=shape, dtype=dtype, kinds=kinds, error=ValueError
        )
        return header

    def read(self, key: str) -> np.ndarray:
        """Member ``key`` as a fresh array (its size was checked on opening)."""
        header = self.check(key)
        out = np.empty(header.shape, dtype=header.dtype, order="F" if header.fortran_order else "C")
        try:
            with self._zip.open(key + ".npy") as f:
                f.read(header.offset)
                _read_into(f, out, f"{self.path}:{key}", ValueError)
        except (zipfile.BadZipFile, EOFError, OSError) as err:
            raise self._bad(f"member {key!r} is truncated or corrupt ({err})") from None
        return out

    def close(self) -> None:
        """Close the archive."""
        self._zip.close()

    def __enter__(self) -> SafeNpz:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
