"""IDX files (the format MNIST and Fashion-MNIST ship in): read, write and load.

An IDX file is a 4-byte magic number, then one big-endian int32 per dimension, then the data
in big-endian row-major order. The magic is two zero bytes, a type code and the number of
dimensions:

    0x08 uint8   0x09 int8   0x0B int16   0x0C int32   0x0D float32   0x0E float64

Files may be gzip-compressed; `read_idx` tells by the gzip magic bytes, not by the name.

Downloading lives in `jdnn.data.download`; nothing here touches the network.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 24   # bytes read (or decompressed) at a time
_CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODE_OF = {(np.dtype(big).kind, np.dtype(big).itemsize): code for code, big in _CODES.items()}

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# ---------------------------------------------------------------------------------------------
# The format.


def _read(stream: BinaryIO, size: int, path: Path, compressed: bool) -> bytearray:
    """Up to `size` bytes of `stream`, read in chunks, so a header that declares more data than
    the file holds never makes it allocate more than the file does."""
    data = bytearray()
    try:
        while len(data) < size:
            chunk = stream.read(min(size - len(data), _CHUNK))
            if not chunk:
                break
            data += chunk
    except (OSError, EOFError, zlib.error) as error:
        if not compressed:
            raise
        raise ValueError(f"read_idx: {path} is a corrupt or truncated gzip file ({error}); "
                         f"delete it and download it again") from None
    return data


def _shape_error(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> str | None:
    """Why a header's `shape` is impossible, or None. Products are Python ints: no overflow."""
    declares = f"its header declares shape {shape} of {dtype.name}"
    if any(d >= 2**31 for d in shape):
        return (f"read_idx: {path} has a corrupt header: {declares}, but IDX dimensions are "
                f"int32, below 2**31; delete the file and download it again")
    nbytes = math.prod(d for d in shape if d) * dtype.itemsize   # NumPy checks zeros aside
    if nbytes > np.iinfo(np.intp).max:
        dimensions = "nonzero dimensions" if 0 in shape else "dimensions"
        return (f"read_idx: {path} has a corrupt header: {declares}, whose {dimensions} "
                f"multiply to {nbytes:.3g} bytes, more than any array can hold; delete the "
                f"file and download it again")
    return None


def _length_error(path: Path, shape: tuple[int, ...], dtype: np.dtype, header: int,
                  actual: int, compressed: bool) -> str:
    """The message for data of `actual` bytes (-1: more than declared, not all counted)."""
    expected = math.prod(shape) * dtype.itemsize
    kind = "truncated" if 0 <= actual < expected else "too long"
    holds = f"more than {expected}" if actual < 0 else f"{actual}"
    return (f"read_idx: {path} is {kind}: its header declares shape {shape} of {dtype.name}, "
            f"i.e. {expected} data bytes, but the file holds {holds} data bytes after the "
            f"{header}-byte header{' (uncompressed)' if compressed else ''}")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file, gzip-compressed or raw, into a native-endian NumPy array.

    The header is checked before any data is read: the size it declares (the product of the
    dimensions, in Python ints, so no overflow) must fit an array and, for a raw file, equal
    the bytes after the header. A gzip file is decompressed in chunks and never past the
    declared size plus one byte, so neither a corrupt header nor a decompression bomb makes it
    allocate more memory than a well-formed file of the declared shape needs.

    Args:
        path: the file; compression is detected from its first bytes, not its name.

    Returns:
        The array, with the file's shape and dtype (uint8, int8, int16, int32, float32 or
        float64), writable and in native byte order.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: naming the file, for a corrupt gzip stream, a header that is not IDX (bad
            magic bytes, unknown type code, too few bytes for the dimensions), a header whose
            dimensions no file can hold (a dimension of 2**31 or more, or a product past what
            an array can address), or data whose length differs from the product of the
            dimensions (truncated or overlong file).

    Examples:
        >>> images = read_idx("mnist/train-images-idx3-ubyte.gz")   # uint8 (60000, 28, 28)
    """
    path = Path(path)
    with path.open("rb") as file:
        compressed = file.read(2) == _GZIP_MAGIC
        file.seek(0)
        size = None if compressed else os.fstat(file.fileno()).st_size
        with (gzip.GzipFile(fileobj=file, mode="rb") if compressed
              else contextlib.nullcontext(file)) as stream:
            magic = _read(stream, 4, path, compressed)
            if len(magic) < 4 or magic[:2] != b"\0\0":
                raise ValueError(f"read_idx: {path} is not an IDX file: it must start with two "
                                 f"zero bytes, then a type code and a dimension count, but "
                                 f"starts with {magic.hex(' ') or 'nothing (empty file)'}")
            code, ndim = magic[2], magic[3]
            if code not in _CODES:
                known = ", ".join(f"0x{c:02X} {np.dtype(t).name}" for c, t in _CODES.items())
                raise ValueError(f"read_idx: {path} has an unknown IDX type code 0x{code:02X}; "
                                 f"known codes are {known}")
            header = 4 + 4 * ndim
            dims = _read(stream, 4 * ndim, path, compressed)
            if len(dims) < 4 * ndim:
                raise ValueError(f"read_idx: {path} declares {ndim} dimensions, which need a "
                                 f"{header}-byte header, but the file holds only "
                                 f"{4 + len(dims)} bytes")
            shape = struct.unpack(f">{ndim}I", dims)
            dtype = np.dtype(_CODES[code])
            problem = _shape_error(path, shape, dtype)
            expected = math.prod(shape) * dtype.itemsize
            if problem is None and size is not None and size - header != expected:
                problem = _length_error(path, shape, dtype, header, size - header, compressed)
            if problem is not None:
                raise ValueError(problem)
            data = _read(stream, expected + 1, path, compressed)
            if len(data) != expected:   # a gzip file: past the declared size, stop counting
                actual = len(data) if len(data) < expected else -1
                raise ValueError(_length_error(path, shape, dtype, header, actual, compressed))
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool = True) -> Path:
    """Writes `array` as an IDX file (the inverse of `read_idx`).

    The file is gzip-compressed when `compress` is True, whatever its name (by convention,
    name compressed files `*.gz`). The gzip header carries no timestamp, so equal arrays give
    byte-identical files (and checksums).

    Args:
        path: where to write; the parent directory must exist.
        array: a NumPy array (or anything `np.asarray` takes) of rank >= 1 and dtype uint8,
            int8, int16, int32, float32 or float64.
        compress: gzip the file.

    Returns:
        `path`, as a `Path`.

    Raises:
        ValueError: for a scalar, an unsupported dtype (e.g. int64: cast to int32 first) or a
            dimension too large for IDX's int32 sizes.

    Examples:
        >>> write_idx("tiny-labels-idx1-ubyte.gz", np.array([3, 1, 4], np.uint8))
    """
    path, array = Path(path), np.asarray(array)
    code = _CODE_OF.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        supported = ", ".join(np.dtype(t).name for t in _CODES.values())
        raise ValueError(f"write_idx: IDX cannot store dtype {array.dtype}; supported: "
                         f"{supported}. Cast first, e.g. array.astype(np.int32)")
    if array.ndim == 0 or array.ndim > 255 or max(array.shape) >= 2**31:
        raise ValueError(f"write_idx: IDX stores arrays of rank 1 to 255 with sizes below 2**31, "
                         f"got shape {array.shape}")
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, code, array.ndim, *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.dtype(_CODES[code])).tobytes()
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
    return path


# ---------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST from a local directory.


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):  # prefer the compressed file, as downloaded
        if (directory / name).is_file():
            return directory / name
    return None


def _load(path: str | os.PathLike, dataset: str, fashion: bool, layout: str,
          normalize: bool) -> Split:
    if layout not in ("nhwc", "flat"):
        raise ValueError(f'{dataset}: layout must be "nhwc" (N, 28, 28, 1) or "flat" '
                         f"(N, 784), got {layout!r}")
    directory = Path(path)
    stems = [name.removesuffix(".gz") for name in MNIST_FILES]
    found = {stem: _find(directory, stem) for stem in stems}
    missing = [stem for stem, file in found.items() if file is None]
    if missing:
        call = f"download_mnist({str(directory)!r}{', fashion=True' if fashion else ''})"
        raise FileNotFoundError(f"{dataset}: {directory} lacks {', '.join(missing)} (each as "
                                f"is or with .gz); download them with jdnn.data.{call}")
    splits = []
    for images_stem, labels_stem in ((stems[0], stems[1]), (stems[2], stems[3])):
        images, labels = read_idx(found[images_stem]), read_idx(found[labels_stem])
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"{dataset}: {found[images_stem]} must hold uint8 images of shape "
                             f"(N, 28, 28), got {images.dtype} of shape {images.shape}")
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise ValueError(f"{dataset}: {found[labels_stem]} must hold uint8 labels of shape "
                             f"(N,), got {labels.dtype} of shape {labels.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{dataset}: {found[images_stem]} holds {len(images)} images but "
                             f"{found[labels_stem]} holds {len(labels)} labels; the files come "
                             f"from different sets, download them again")
        if labels.size and labels.max() >= 10:
            raise ValueError(f"{dataset}: {found[labels_stem]} holds labels up to "
                             f"{labels.max()}, but digits/classes lie in [0, 10)")
        x = images.astype(np.float32)
        if normalize:
            x /= 255.0
        x = x.reshape(len(x), -1) if layout == "flat" else x[..., None]
        splits.append((x, labels.astype(np.int32)))
    return splits[0], splits[1]


def load_mnist(path: str | os.PathLike, *, layout: str = "nhwc", normalize: bool = True) -> Split:
    """Loads MNIST from the four IDX files in a local directory (see `download_mnist`).

    Reads `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and
    `t10k-labels-idx1-ubyte`, each gzipped (`.gz`, preferred when both exist) or raw.

    Args:
        path: the directory holding the files.
        layout: `"nhwc"` for `(N, 28, 28, 1)` images (for `Conv2D`), `"flat"` for `(N, 784)`
            rows (for `Dense`).
        normalize: divide the pixels by 255 so they lie in `[0, 1]`; if False they stay `0..255`
            (still float32).

    Returns:
        `((x_train, y_train), (x_test, y_test))`: x float32 `(60000, 28, 28, 1)` and
        `(10000, 28, 28, 1)` for the official files, y int32 in `[0, 10)`. Other image sizes
        `H x W` are accepted and give `(N, H, W, 1)` (or `(N, H * W)`).

    Raises:
        FileNotFoundError: naming the directory and the missing files.
        ValueError: for a bad `layout`, a corrupt file (see `read_idx`), images that are not
            uint8 `(N, H, W)`, labels that are not uint8 `(N,)` or outside `[0, 10)`, or image
            and label counts that differ.

    Examples:
        >>> jdnn.data.download_mnist("~/data/mnist")
        >>> (x_train, y_train), (x_test, y_test) = jdnn.data.load_mnist("~/data/mnist")
    """
    return _load(Path(path).expanduser(), "load_mnist", False, layout, normalize)


def load_fashion_mnist(path: str | os.PathLike, *, layout: str = "nhwc",
                       normalize: bool = True) -> Split:
    """Loads Fashion-MNIST from a local directory; the files, layout and checks are MNIST's.

    Fashion-MNIST uses MNIST's file names and format: 28x28 grey images of ten kinds of
    clothing (0 T-shirt/top, 1 trouser, 2 pullover, 3 dress, 4 coat, 5 sandal, 6 shirt,
    7 sneaker, 8 bag, 9 ankle boot). Keep it in its own directory. See `load_mnist` for the
    arguments, results and errors.

    Examples:
        >>> jdnn.data.download_mnist("~/data/fashion", fashion=True)
        >>> (x_train, y_train), _ = jdnn.data.load_fashion_mnist("~/data/fashion", layout="flat")
    """
    return _load(Path(path).expanduser(), "load_fashion_mnist", True, layout, normalize)
