"""Downloading MNIST / Fashion-MNIST over http(s): checksum-verified, length-checked, bounded
in time, atomic, and only when called."""

from __future__ import annotations

import hashlib
import http.client
import math
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
SCHEMES = ("http", "https")
DEFAULT_DEADLINE = 600.0   # seconds per file: MNIST's largest file is 9.9 MB


# ---------------------------------------------------------------------------------------------
# Arguments, checked before anything touches the network or the disk.


def _check_url(base_url: str) -> None:
    try:
        parts = urllib.parse.urlsplit(base_url)
        ok = isinstance(base_url, str) and parts.scheme.lower() in SCHEMES and bool(parts.netloc)
    except (TypeError, ValueError, AttributeError):   # e.g. "http://[::1" or not a string
        ok = False
    if not ok:
        raise ValueError(f"download_mnist: base_url must be an http:// or https:// URL, got "
                         f"{base_url!r}; for files already on disk, skip the download and pass "
                         f"their directory to load_mnist / load_fashion_mnist")


def _seconds(name: str, value: Any, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    ok = (isinstance(value, (int, float, np.integer, np.floating))
          and not isinstance(value, (bool, np.bool_)) and math.isfinite(value) and value > 0)
    if not ok:
        expected = "a positive number of seconds" + (" or None (no limit)" if allow_none else "")
        raise ValueError(f"download_mnist: {name} must be {expected}, got {value!r}")
    return float(value)


def _algorithm(name: str, digest: str) -> str:
    digest = digest.lower()
    if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
        return "sha256"
    if len(digest) == 32 and all(c in "0123456789abcdef" for c in digest):
        return "md5"
    raise ValueError(f"download_mnist: the checksum for {name} must be a SHA-256 (64 hex digits) "
                     f"or MD5 (32 hex digits) digest, got {digest!r}")


# ---------------------------------------------------------------------------------------------
# Downloading.


class _HTTPRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) URLs only (urllib alone would also follow one to ftp://)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in SCHEMES:
            raise urllib.error.HTTPError(newurl, code, f"{msg}, a redirect to {newurl!r}, which "
                                         f"is not an http(s) URL: refused", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _digests(path: Path) -> dict[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            sha.update(block)
            md5.update(block)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def _stream(url: str, out, timeout: float, deadline: float | None
            ) -> tuple[int, int | None, bool]:
    """Copies the body of `url` into `out`; returns `(bytes received, bytes announced or None,
    whether the deadline passed)`. Raises urllib's and http.client's errors as they come.

    `read1` returns as soon as any bytes arrive, so the deadline is checked between reads even
    when a server drips bytes (one `read` of a block would wait for the whole block). The body
    is read to the end of the connection when the server says it will close it, so a body
    longer than its `Content-Length` shows instead of being cut at the announced length.
    """
    started = time.monotonic()
    opener = urllib.request.build_opener(_HTTPRedirectsOnly)
    wait = timeout if deadline is None else min(timeout, deadline)
    with opener.open(url, timeout=wait) as response:
        announced = response.length   # Content-Length; None if absent, invalid or chunked
        if announced is not None and response.will_close:
            response.length = None   # http.client would stop at the announced length
        received = 0
        while True:
            if deadline is not None and time.monotonic() - started > deadline:
                return received, announced, True
            try:
                block = response.read1(1 << 20)
            except TimeoutError:
                if received == announced:   # all of it came; the server kept the line open
                    break
                raise
            if not block:
                break
            out.write(block)
            received += len(block)
            if announced is not None and received > announced:
                break   # longer than announced: the rest does not matter
    return received, announced, False


def _download(url: str, target: Path, expected: tuple[str, str] | None, timeout: float,
              deadline: float | None) -> str:
    """Streams `url` into a temp file beside `target`, verifies it, renames it; returns SHA-256.

    The temp file lives in `target`'s directory so `os.replace` is an atomic rename; it is
    fsynced before the checksum is taken, and removed on any error (or interrupt).
    """
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    temp = Path(temp_name)
    nothing = f"nothing was saved as {target}"
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                received, announced, late = _stream(url, out, timeout, deadline)
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
        if late:
            of = "" if announced is None else f" of the {announced} announced"
            raise TimeoutError(f"download_mnist: {url} took longer than deadline={deadline:g} s "
                               f"({received} bytes{of} received); {nothing}. On a slow "
                               f"connection pass a larger deadline= (or deadline=None)")
        if announced is not None and received != announced:
            sent = (f"ended after {received} bytes" if received < announced
                    else "sent more bytes")
            raise OSError(f"download_mnist: {url} {sent} but announced {announced} "
                          f"(Content-Length): the connection was cut or the server misbehaves; "
                          f"{nothing}. Try again, or use another base_url")
        digests = _digests(temp)
        if expected is not None and digests[expected[0]] != expected[1]:
            raise ValueError(f"download_mnist: {url} does not match its checksum: expected "
                             f"{expected[0]} {expected[1]}, got {digests[expected[0]]}. The "
                             f"download was corrupted or the mirror serves other files; {nothing}")
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return digests["sha256"]


def download_mnist(dest: str | os.PathLike, *, base_url: str | None = None,
                   files: Sequence[str] | None = None,
                   checksums: Mapping[str, str] | None = None, timeout: float = 30,
                   deadline: float | None = DEFAULT_DEADLINE,
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

    Without a checksum a download is still checked: when the server announces a length
    (`Content-Length`), a body shorter or longer than announced is an error and nothing is
    kept (a longer one shows when the server closes the connection after the body, as urllib
    asks it to). A body of unannounced length (chunked, or HTTP/1.0 read to the end) that is
    cut off can only be told by a checksum. Each file must arrive within `deadline` seconds in
    all, however steadily its bytes trickle in; `timeout` bounds each wait on the server.

    Args:
        dest: the directory to fill; created if missing.
        base_url: an `http://` or `https://` URL where the files live; `files` are appended to
            it. Defaults to `DEFAULT_MNIST_URL`, or `DEFAULT_FASHION_MNIST_URL` when `fashion`
            is True. Redirects are followed to http(s) URLs only.
        files: file names to fetch; defaults to the four standard `.gz` files (`MNIST_FILES`).
        checksums: `{file name: SHA-256 or MD5 hex digest}`, or None for the published digests.
        timeout: seconds to wait on the server, per connection and read.
        deadline: seconds each file may take in all, from the request to the last byte
            (checked between reads, so it may run over by up to `timeout`); None for no
            limit. The default, 600 s (`DEFAULT_DEADLINE`), is ample for MNIST's 9.9 MB
            largest file at 20 KB/s.
        fashion: fetch Fashion-MNIST (its default URL and digests) instead of MNIST.

    Returns:
        `{file name: SHA-256 hex digest}` for every file in `files`.

    Raises:
        ValueError: on a checksum mismatch (naming the file, URL, expected and actual digests;
            no file is left behind), and before any request for a malformed digest, a
            `base_url` that is not http(s) (`file://`, `ftp://`, no scheme), a file name with
            a directory, or a `timeout` / `deadline` that is not a positive number.
        OSError: naming the URL, with no file left behind, if the server cannot be reached,
            answers with an HTTP error (e.g. 404) or sends a body shorter or longer than its
            `Content-Length`; `TimeoutError` (an `OSError`) if a file takes longer than
            `deadline`.

    Examples:
        >>> digests = jdnn.data.download_mnist("~/data/mnist")    # about 12 MB, four files
        >>> (x_train, y_train), _ = jdnn.data.load_mnist("~/data/mnist")
    """
    if base_url is None:
        base_url = DEFAULT_FASHION_MNIST_URL if fashion else DEFAULT_MNIST_URL
    _check_url(base_url)
    timeout = _seconds("timeout", timeout)
    deadline = _seconds("deadline", deadline, allow_none=True)
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
        result[name] = _download(base_url + name, target, expected.get(name), timeout,
                                 deadline)
    return result

