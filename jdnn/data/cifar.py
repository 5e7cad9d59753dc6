"""CIFAR-10 from its binary distribution (`cifar-10-batches-bin`), never the pickled one.

Each of `data_batch_1.bin` .. `data_batch_5.bin` (train) and `test_batch.bin` (test) is 10000
records of 3073 bytes: one label byte in 0..9, then 3072 pixel bytes, channel-major (1024 red,
1024 green, 1024 blue, each 32x32 row-major). Nothing here unpickles anything: the files are
read as raw bytes, so a tampered download cannot run code.

`download_cifar10` fetches the official tarball through `jdnn.data.download` (checksum,
length, deadline, atomic rename) and extracts the six batches with tarfile's `data` filter,
into a temporary folder renamed into place.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from jdnn.data.download import DEFAULT_DEADLINE, download_mnist

Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch.bin"
CIFAR10_FILES = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
CIFAR10_FOLDER = "cifar-10-batches-bin"   # the tarball's top folder
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
# The MD5 published on https://www.cs.toronto.edu/~kriz/cifar.html (the page lists no SHA-256).
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
RECORD = 1 + 32 * 32 * 3
RECORDS_PER_FILE = 10000


# ---------------------------------------------------------------------------------------------
# Reading.


def _directory(path: Path) -> Path:
    """`path` itself if it holds the batches, else its `cifar-10-batches-bin` sub-folder (where
    `download_cifar10` puts them)."""
    if not (path / CIFAR10_TEST_FILE).is_file() and (path / CIFAR10_FOLDER).is_dir():
        return path / CIFAR10_FOLDER
    return path


def read_cifar_batch(path: str | os.PathLike, *, records: int | None = RECORDS_PER_FILE
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR-10 binary batch file into uint8 images and labels.

    Args:
        path: a `*.bin` file of 3073-byte records (1 label byte, 3072 channel-major pixels).
        records: the number of records the file must hold (10000 in the official files);
            None accepts any whole number of records.

    Returns:
        `(images, labels)`: uint8 `(N, 3, 32, 32)` channel-major, as stored, and uint8 `(N,)`.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: naming the file, if its size is not a whole number of records (truncated
            or corrupt), differs from `records` records, or a label lies outside 0..9.

    Examples:
        >>> images, labels = read_cifar_batch("cifar-10-batches-bin/test_batch.bin")
    """
    path = Path(path)
    data = np.fromfile(path, np.uint8)
    if data.size % RECORD or (records is not None and data.size != records * RECORD):
        expected = (f"{records} records of {RECORD} bytes ({records * RECORD} bytes)"
                    if records is not None else f"a whole number of {RECORD}-byte records")
        raise ValueError(f"load_cifar10: {path} holds {data.size} bytes, but a CIFAR-10 binary "
                         f"batch holds {expected}: the file is truncated or corrupt; delete it "
                         f"and download it again (jdnn.data.download_cifar10)")
    data = data.reshape(-1, RECORD)
    labels, images = data[:, 0], data[:, 1:].reshape(-1, 3, 32, 32)
    bad = np.flatnonzero(labels >= 10)
    if bad.size:
        raise ValueError(f"load_cifar10: {path} holds label {labels[bad[0]]} in record "
                         f"{bad[0]} ({bad.size} records in all) outside 0..9: the file is "
                         f"corrupt or not a CIFAR-10 batch (CIFAR-100's has 2 label bytes)")
    return images, labels


def load_cifar10(path: str | os.PathLike, *, layout: str = "nhwc", normalize: bool = True,
                 records: int | None = RECORDS_PER_FILE) -> Split:
    """Loads CIFAR-10 from its binary batches in a local directory (see `download_cifar10`).

    Args:
        path: the folder holding `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin`,
            or the folder above it that holds `cifar-10-batches-bin/`.
        layout: `"nhwc"` for `(N, 32, 32, 3)` images (for `Conv2D`), `"nchw"` for the stored
            `(N, 3, 32, 32)`, `"flat"` for `(N, 3072)` rows in NHWC order (for `Dense`).
        normalize: divide the pixels by 255 so they lie in `[0, 1]`; if False they stay `0..255`
            (still float32).
        records: records each file must hold (10000 in the official files); None accepts any
            whole number (for subsets).

    Returns:
        `((x_train, y_train), (x_test, y_test))`: x float32 `(50000, 32, 32, 3)` and
        `(10000, 32, 32, 3)`, y int32 in `[0, 10)`; the class names are `CIFAR10_CLASSES`.

    Raises:
        FileNotFoundError: naming the directory and the missing files.
        ValueError: for a bad `layout`, or a truncated or corrupt file or a label outside 0..9
            (naming the file; see `read_cifar_batch`).

    Examples:
        >>> (x_train, y_train), (x_test, y_test) = jdnn.data.load_cifar10(
        ...     jdnn.data.download_cifar10("~/data/cifar10"))
    """
    if layout not in ("nhwc", "nchw", "flat"):
        raise ValueError(f'load_cifar10: layout must be "nhwc" (N, 32, 32, 3), "nchw" '
                         f'(N, 3, 32, 32) or "flat" (N, 3072), got {layout!r}')
    directory = _directory(Path(path).expanduser())
    missing = [name for name in CIFAR10_FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"load_cifar10: {directory} lacks {', '.join(missing)}; "
                                f"download them with jdnn.data.download_cifar10"
                                f"({str(Path(path))!r}) (the binary version, not the pickled "
                                f"python one)")
    splits = []
    for names in (CIFAR10_TRAIN_FILES, (CIFAR10_TEST_FILE,)):
        parts = [read_cifar_batch(directory / name, records=records) for name in names]
        images = np.concatenate([p[0] for p in parts])
        if layout != "nchw":
            images = images.transpose(0, 2, 3, 1)
        x = images.astype(np.float32)
        if normalize:
            x /= 255.0
        if layout == "flat":
            x = x.reshape(len(x), -1)
        splits.append((x, np.concatenate([p[1] for p in parts]).astype(np.int32)))
    return splits[0], splits[1]


# ---------------------------------------------------------------------------------------------
# Downloading and extracting.


def _extract(archive: Path, dest: Path) -> Path:
    """Extracts the batch files of `archive` to `dest/cifar-10-batches-bin`, atomically: into a
    temporary folder beside it, then one rename. Members are filtered by tarfile's `data`
    filter (no absolute paths, no `..`, no links out, no devices) and only regular files
    under the top folder are taken."""
    target = dest / CIFAR10_FOLDER
    temp = Path(tempfile.mkdtemp(dir=dest, prefix=f".{CIFAR10_FOLDER}.", suffix=".part"))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers()
                       if m.isfile() and Path(m.name).parent.name == CIFAR10_FOLDER
                       and len(Path(m.name).parts) == 2]
            tar.extractall(temp, members=members, filter="data")
        missing = [name for name in CIFAR10_FILES
                   if not (temp / CIFAR10_FOLDER / name).is_file()]
        if missing:
            raise ValueError(f"download_cifar10: {archive} lacks {CIFAR10_FOLDER}/"
                             f"{', '.join(missing)}; it is not the CIFAR-10 binary tarball")
        if target.exists():   # an old copy: moved aside (one rename), removed with `temp`
            os.replace(target, temp / "old")
        os.replace(temp / CIFAR10_FOLDER, target)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return target


def download_cifar10(dest: str | os.PathLike, *, url: str = CIFAR10_URL,
                     checksum: str | None = CIFAR10_MD5, timeout: float = 30,
                     deadline: float | None = DEFAULT_DEADLINE, keep_archive: bool = True
                     ) -> Path:
    """Downloads the CIFAR-10 binary tarball into `dest`, verified, and extracts its batches.

    The tarball (`cifar-10-binary.tar.gz`, 170 MB) goes through `jdnn.data.download_mnist`'s
    downloader: streamed to a temporary file, checked against `checksum` (by default the MD5
    published by the dataset's authors) and its announced length, and renamed into place only
    then; a copy already in `dest` whose checksum matches is not downloaded again. Its six
    batch files are then extracted into `dest/cifar-10-batches-bin`, which appears at once,
    complete, or not at all. Errors from the download itself name `download_mnist`'s
    downloader and the URL.

    Args:
        dest: the directory to fill; created if missing.
        url: an http(s) URL of the tarball (e.g. a mirror).
        checksum: the tarball's MD5 (32 hex digits) or SHA-256 (64); None skips the check.
        timeout: seconds to wait on the server, per connection and read.
        deadline: seconds the whole download may take; None for no limit. The default, 600 s,
            needs about 300 KB/s for the 170 MB tarball: pass more on a slow line.
        keep_archive: keep the tarball (so a later call does not download it again).

    Returns:
        The folder holding the batches, `dest/cifar-10-batches-bin`, ready for `load_cifar10`.

    Raises:
        ValueError: on a checksum mismatch, a tarball without the six batches, or bad arguments.
        OSError: if the server cannot be reached or the transfer fails (see `download_mnist`).

    Examples:
        >>> (x_train, y_train), _ = jdnn.data.load_cifar10(jdnn.data.download_cifar10("~/c10"))
    """
    if not isinstance(url, str) or "/" not in url.rstrip("/"):
        raise ValueError(f"download_cifar10: url must be an http(s) URL of the tarball, got "
                         f"{url!r}")
    base_url, name = url.rsplit("/", 1)
    if not name:
        raise ValueError(f"download_cifar10: url must end in the tarball's file name, got "
                         f"{url!r}")
    dest = Path(dest).expanduser()
    checksums = {} if checksum is None else {name: checksum}
    download_mnist(dest, base_url=base_url + "/", files=[name], checksums=checksums,
                   timeout=timeout, deadline=deadline)
    target = dest / CIFAR10_FOLDER
    sizes = [(target / f).stat().st_size if (target / f).is_file() else -1 for f in CIFAR10_FILES]
    if sizes != [RECORDS_PER_FILE * RECORD] * len(CIFAR10_FILES):   # not extracted yet
        target = _extract(dest / name, dest)
    if not keep_archive:
        (dest / name).unlink()
    return target
