"""Downloading MNIST / Fashion-MNIST: checksum-verified, atomic, and only when called."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from jdnn.data.idx import MNIST_FILES

DEFAULT_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
DEFAULT_FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# The published MD5 digests of the four .gz files, as listed in torchvision's MNIST and
# FashionMNIST `resources` (every mirror serves the same bytes). SHA-256 digests of the
# official files are not recorded here; `download_mnist` returns them once computed.
MNIST_MD5 = dict(zip(MNIST_FILES, (
    "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
    "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")))
FASHION_MNIST_MD5 = dict(zip(MNIST_FILES, (
    "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
    "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")))



# ---------------------------------------------------------------------------------------------
# Downloading.


def _digests(path: Path) -> dict[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            sha.update(block)
            md5.update(block)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def _algorithm(name: str, digest: str) -> str:
    digest = digest.lower()
    if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
        return "sha256"
    if len(digest) == 32 and all(c in "0123456789abcdef" for c in digest):
        return "md5"
    raise ValueError(f"download_mnist: the checksum for {name} must be a SHA-256 (64 hex digits) "
                     f"or MD5 (32 hex digits) digest, got {digest!r}")


def _download(url: str, target: Path, expected: tuple[str, str] | None, timeout: float) -> str:
    """Streams `url` into a temp file beside `target`, verifies it, renames it; returns SHA-256.

    The temp file lives in `target`'s directory so `os.replace` is an atomic rename; it is
    fsynced before the checksum is taken, and removed on any error (or interrupt).
    """
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
            except urllib.error.HTTPError as error:
                raise OSError(f"download_mnist: {url} answered HTTP {error.code} {error.reason}; "
                              f"check base_url and the file names") from None
            except (urllib.error.URLError, http.client.HTTPException, TimeoutError,
                    ConnectionError) as error:
                reason = getattr(error, "reason", error)
                raise OSError(f"download_mnist: could not download {url}: {reason}; check the "
                              f"network connection and base_url") from None
            out.flush()
            os.fsync(out.fileno())
        digests = _digests(temp)
        if expected is not None and digests[expected[0]] != expected[1]:
            raise ValueError(f"download_mnist: {url} does not match its checksum: expected "
                             f"{expected[0]} {expected[1]}, got {digests[expected[0]]}. The "
                             f"download was corrupted or the mirror serves other files; nothing "
                             f"was saved as {target}")
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return digests["sha256"]


def download_mnist(dest: str | os.PathLike, *, base_url: str | None = None,
                   files: Sequence[str] | None = None,
                   checksums: Mapping[str, str] | None = None, timeout: float = 30,
                   fashion: bool = False) -> dict[str, str]:
    """Downloads the MNIST (or Fashion-MNIST) IDX files into `dest`, verified and atomically.

    Each file is streamed into a temporary file inside `dest`, fsynced, checked against its
    checksum and only then renamed into place (`os.replace`), so `dest` never holds a partial
    or corrupt file under the real name, even if the process is killed. A file already present
    whose checksum matches is not downloaded again; one that does not match is replaced.

    Checksums: by default (`checksums=None`) each standard file is verified against its
    published MD5 digest (`MNIST_MD5` / `FASHION_MNIST_MD5`, from torchvision's resource
    lists; every mirror serves the same bytes). Pass a dict `{file name: hex digest}` to use
    your own; each digest may be SHA-256 (64 hex digits) or MD5 (32). A file the dict does not
    name (or every file, with `checksums={}`) is downloaded unverified, and an existing copy
    of it is kept as is. Either way the SHA-256 digest of every file is returned, so it can be
    pinned for the next call.

    Args:
        dest: the directory to fill; created if missing.
        base_url: where the files live; `files` are appended to it. Defaults to
            `DEFAULT_MNIST_URL`, or `DEFAULT_FASHION_MNIST_URL` when `fashion` is True.
        files: file names to fetch; defaults to the four standard `.gz` files (`MNIST_FILES`).
        checksums: `{file name: SHA-256 or MD5 hex digest}`, or None for the published digests.
        timeout: seconds to wait on the server, per connection and read.
        fashion: fetch Fashion-MNIST (its default URL and digests) instead of MNIST.

    Returns:
        `{file name: SHA-256 hex digest}` for every file in `files`.

    Raises:
        ValueError: on a checksum mismatch (naming the file, URL, expected and actual digests;
            no file is left behind) or a malformed digest.
        OSError: if the server cannot be reached or answers with an HTTP error (e.g. 404),
            naming the URL; no file is left behind.

    Example:
        >>> digests = jdnn.data.download_mnist("~/data/mnist")    # about 12 MB, four files
        >>> (x_train, y_train), _ = jdnn.data.load_mnist("~/data/mnist")
    """
    if base_url is None:
        base_url = DEFAULT_FASHION_MNIST_URL if fashion else DEFAULT_MNIST_URL
    if not base_url.endswith("/"):
        base_url += "/"
    files = tuple(MNIST_FILES if files is None else files)
    if checksums is None:
        checksums = FASHION_MNIST_MD5 if fashion else MNIST_MD5
    for name in files:
        if not name or Path(name).name != name:
            raise ValueError(f"download_mnist: file names must be plain names without "
                             f"directories, got {name!r}")
    expected = {name: (_algorithm(name, checksums[name]), checksums[name].lower())
                for name in files if name in checksums}
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)

    result = {}
    for name in files:
        target = dest / name
        if target.is_file():
            digests = _digests(target)
            if name not in expected or digests[expected[name][0]] == expected[name][1]:
                result[name] = digests["sha256"]
                continue
        result[name] = _download(base_url + name, target, expected.get(name), timeout)
    return result

