"""jdnn.data.download: `download_mnist` against HTTP servers on 127.0.0.1 (no other traffic):
honest ones, ones that cut the body short, send more than they announce, drip bytes, keep the
connection open or redirect elsewhere; and the arguments it refuses before any request.
"""

import contextlib
import functools
import hashlib
import http.server
import os
import socket
import threading
import time
import types

import numpy as np
import pytest

from jdnn.data.download import download_mnist
from jdnn.data.idx import MNIST_FILES, load_mnist, write_idx


def make_mnist(directory, n_train=20, n_test=10, seed=0):
    """Writes four small MNIST-style .gz files; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              rng.integers(0, 10, n_train, dtype=np.uint8),
              rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              rng.integers(0, 10, n_test, dtype=np.uint8)]
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in zip(MNIST_FILES, arrays):
        write_idx(directory / name, array)
    return arrays


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Nothing may leave this host: no proxy, whatever the environment says."""
    for var in ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    monkeypatch.setenv("no_proxy", "*")


@contextlib.contextmanager
def serving(handler):
    """Serves `handler` (a request handler class or factory) on 127.0.0.1; yields its URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """Serves the directory `tmp_path / "srv"`; counts GET requests by path."""
    root = tmp_path / "srv"
    root.mkdir()
    requests = []

    class Handler(QuietHandler):
        def do_GET(self):
            requests.append(self.path.lstrip("/"))
            super().do_GET()

    with serving(functools.partial(Handler, directory=str(root))) as url:
        yield types.SimpleNamespace(root=root, requests=requests, url=url)


def digests(directory, algorithm="sha256"):
    return {name: hashlib.new(algorithm, (directory / name).read_bytes()).hexdigest()
            for name in MNIST_FILES}


# --- honest servers --------------------------------------------------------------------------


def test_download_then_load_round_trips_exactly(server, tmp_path):
    arrays = make_mnist(server.root)
    dest = tmp_path / "dest" / "mnist"
    expected = digests(server.root)
    result = download_mnist(dest, base_url=server.url, checksums=expected, timeout=5)
    assert result == expected
    assert sorted(os.listdir(dest)) == sorted(MNIST_FILES)   # no temp files left
    assert sorted(server.requests) == sorted(MNIST_FILES)
    (x, y), (x_test, y_test) = load_mnist(dest, normalize=False)
    for loaded, written in zip((x[..., 0], y, x_test[..., 0], y_test), arrays):
        np.testing.assert_array_equal(loaded, written)


def test_download_accepts_md5_digests_and_a_url_without_slash(server, tmp_path):
    make_mnist(server.root)
    result = download_mnist(tmp_path / "d", base_url=server.url.rstrip("/"),
                            checksums=digests(server.root, "md5"), timeout=5)
    assert result == digests(server.root)   # always reports SHA-256


def test_download_skips_good_files_and_replaces_corrupt_ones(server, tmp_path):
    make_mnist(server.root)
    expected = digests(server.root)
    dest = tmp_path / "d"
    download_mnist(dest, base_url=server.url, checksums=expected, timeout=5)
    assert len(server.requests) == 4
    assert download_mnist(dest, base_url=server.url, checksums=expected, timeout=5) == expected
    assert len(server.requests) == 4   # nothing fetched again
    (dest / MNIST_FILES[1]).write_bytes(b"corrupt")
    download_mnist(dest, base_url=server.url, checksums=expected, timeout=5)
    assert server.requests[4:] == [MNIST_FILES[1]]
    assert digests(dest) == expected


def test_download_checksum_mismatch_raises_and_leaves_nothing(server, tmp_path):
    make_mnist(server.root)
    wrong = digests(server.root)
    wrong[MNIST_FILES[0]] = "0" * 64
    dest = tmp_path / "d"
    with pytest.raises(ValueError, match=r"download_mnist: .*train-images-idx3-ubyte.gz does not "
                                         r"match its checksum: expected sha256 0{64}, got "):
        download_mnist(dest, base_url=server.url, checksums=wrong, timeout=5)
    assert os.listdir(dest) == []   # neither the file nor its temp file


def test_download_verifies_the_published_digests_by_default(server, tmp_path):
    make_mnist(server.root)   # not the real MNIST: the published MD5s cannot match
    with pytest.raises(ValueError, match=r"does not match its checksum: expected md5 "
                                         r"f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        download_mnist(tmp_path / "d", base_url=server.url, timeout=5)
    with pytest.raises(ValueError, match=r"expected md5 8d4fb7e6c68d591d4c3dfef9ec88bf0d"):
        download_mnist(tmp_path / "f", base_url=server.url, timeout=5, fashion=True)
    assert os.listdir(tmp_path / "d") == os.listdir(tmp_path / "f") == []


def test_download_with_empty_checksums_is_unverified_but_reports(server, tmp_path):
    make_mnist(server.root)
    assert download_mnist(tmp_path / "d", base_url=server.url, checksums={},
                          timeout=5) == digests(server.root)


def test_download_http_404_raises_and_leaves_nothing(server, tmp_path):
    write_idx(server.root / "only.gz", np.zeros(3, np.uint8))
    with pytest.raises(OSError, match=r"download_mnist: http://127.0.0.1:\d+/missing.gz answered "
                                      r"HTTP 404"):
        download_mnist(tmp_path / "d", base_url=server.url, files=["only.gz", "missing.gz"],
                       checksums={}, timeout=5)
    assert os.listdir(tmp_path / "d") == ["only.gz"]


def test_download_connection_refused_raises(tmp_path):
    with socket.socket() as s:   # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OSError, match=r"download_mnist: could not download http://127.0.0.1"):
        download_mnist(tmp_path / "d", base_url=f"http://127.0.0.1:{port}/", checksums={},
                       timeout=5)
    assert os.listdir(tmp_path / "d") == []


@pytest.mark.parametrize("kwargs, match", [
    ({"checksums": {MNIST_FILES[0]: "abc"}}, r"the checksum for train-images-idx3-ubyte.gz must "
                                             r"be a SHA-256 \(64 hex digits\) or MD5"),
    ({"files": ["../evil.gz"]}, r"file names must be plain names without directories"),
])
def test_download_rejects_bad_arguments_before_any_request(server, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        download_mnist(tmp_path / "d", base_url=server.url, timeout=5, **kwargs)
    assert server.requests == []


# --- servers that lie about the length, drip, linger or redirect -----------------------------

BODY = bytes(range(256)) * 4   # 1 KiB


def body_handler(announced, body=BODY, *, drip_s=0.0, linger=None, protocol="HTTP/1.0"):
    """A handler that announces `announced` bytes (None: no Content-Length), sends `body`, one
    byte every `drip_s` seconds if set, then keeps the connection open until `linger` is set."""

    class Handler(QuietHandler):
        protocol_version = protocol

        def do_GET(self):
            self.send_response(200)
            if announced is not None:
                self.send_header("Content-Length", str(announced))
            if linger is not None:
                self.send_header("Connection", "close")
            self.end_headers()
            try:
                if drip_s:
                    for i in range(len(body)):
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        time.sleep(drip_s)
                else:
                    self.wfile.write(body)
                    self.wfile.flush()
            except OSError:   # the client gave up
                return
            if linger is not None:
                linger.wait(5)

    return Handler


@pytest.mark.parametrize("announced, match", [
    (len(BODY) + 100, r"ended after 1024 bytes but announced 1124 \(Content-Length\): the "
                      r"connection was cut or the server misbehaves; nothing was saved as "),
    (len(BODY) - 100, r"sent more bytes but announced 924 \(Content-Length\)"),
], ids=["shorter", "longer"])
@pytest.mark.parametrize("checksums", [{}, None], ids=["unverified", "default_digests"])
def test_a_body_unlike_its_content_length_is_an_error_and_nothing_is_kept(tmp_path, announced,
                                                                           match, checksums):
    dest = tmp_path / "d"
    with serving(body_handler(announced)) as url, pytest.raises(OSError) as info:
        download_mnist(dest, base_url=url, files=[MNIST_FILES[0]], checksums=checksums,
                       timeout=5)
    assert info.match(rf"download_mnist: {url}train-images-idx3-ubyte.gz {match}.*"
                      rf"train-images-idx3-ubyte.gz. Try again")
    assert not isinstance(info.value, TimeoutError)
    assert os.listdir(dest) == []   # neither the file nor its temp file


def test_the_announced_length_is_kept_when_it_is_true_or_absent(tmp_path):
    sha = hashlib.sha256(BODY).hexdigest()
    for announced in (len(BODY), None):
        dest = tmp_path / str(announced)
        with serving(body_handler(announced)) as url:
            assert download_mnist(dest, base_url=url, files=["a.gz"], checksums={},
                                  timeout=5) == {"a.gz": sha}
        assert (dest / "a.gz").read_bytes() == BODY


def test_a_server_that_keeps_the_connection_open_after_the_body_is_fine(tmp_path):
    linger = threading.Event()   # says "Connection: close", then holds the line
    try:
        with serving(body_handler(len(BODY), protocol="HTTP/1.1", linger=linger)) as url:
            result = download_mnist(tmp_path / "d", base_url=url, files=["a.gz"],
                                    checksums={}, timeout=0.5)
    finally:
        linger.set()
    assert result == {"a.gz": hashlib.sha256(BODY).hexdigest()}
    assert (tmp_path / "d" / "a.gz").read_bytes() == BODY


def test_a_dripping_download_stops_at_the_deadline_and_keeps_nothing(tmp_path):
    # 200 bytes at one per 10 ms take 2 s; each read waits far less than timeout=5.
    body = BODY[:200]
    with serving(body_handler(len(body), body, drip_s=0.01)) as url:
        with pytest.raises(TimeoutError, match=r"download_mnist: http://127.0.0.1:\d+/a.gz took "
                                               r"longer than deadline=0.2 s \(\d+ bytes of the "
                                               r"200 announced received\); nothing was saved as "
                                               r".*a.gz. On a slow connection pass a larger "
                                               r"deadline= \(or deadline=None\)"):
            download_mnist(tmp_path / "d", base_url=url, files=["a.gz"], checksums={},
                           timeout=5, deadline=0.2)
    assert os.listdir(tmp_path / "d") == []


def test_a_redirect_to_a_non_http_url_is_refused(tmp_path):
    class Redirect(QuietHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/mnist/a.gz")
            self.send_header("Content-Length", "0")
            self.end_headers()

    with serving(Redirect) as url:
        with pytest.raises(OSError, match=r"download_mnist: .*/a.gz answered HTTP 302 .*a "
                                          r"redirect to 'ftp://127.0.0.1/mnist/a.gz', which is "
                                          r"not an http\(s\) URL: refused"):
            download_mnist(tmp_path / "d", base_url=url, files=["a.gz"], checksums={},
                           timeout=5)
    assert os.listdir(tmp_path / "d") == []


# --- arguments refused before any request ----------------------------------------------------


@pytest.mark.parametrize("base_url", [
    "file:///tmp/mnist/", "ftp://127.0.0.1/mnist/", "127.0.0.1:8000/mnist/", "mnist/",
    "//127.0.0.1/mnist/", "http:///mnist/", "", "http://[::1/mnist/",
])
def test_download_refuses_urls_that_are_not_http(tmp_path, base_url):
    with pytest.raises(ValueError, match=r"download_mnist: base_url must be an http:// or "
                                         r"https:// URL, got .*; for files already on disk, "
                                         r"skip the download and pass their directory to "
                                         r"load_mnist"):
        download_mnist(tmp_path / "d", base_url=base_url, checksums={})
    assert not (tmp_path / "d").exists()   # refused before anything was touched


@pytest.mark.parametrize("kwargs, match", [
    ({"deadline": 0}, r"deadline must be a positive number of seconds or None \(no limit\), "
                      r"got 0"),
    ({"deadline": -1.0}, r"deadline must be .* got -1.0"),
    ({"deadline": float("nan")}, r"deadline must be .* got nan"),
    ({"deadline": "60"}, r"deadline must be .* got '60'"),
    ({"deadline": True}, r"deadline must be .* got True"),
    ({"timeout": 0}, r"timeout must be a positive number of seconds, got 0"),
    ({"timeout": None}, r"timeout must be a positive number of seconds, got None"),
    ({"timeout": float("inf")}, r"timeout must be .* got inf"),
])
def test_download_rejects_bad_time_limits_before_any_request(server, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=r"download_mnist: " + match):
        download_mnist(tmp_path / "d", base_url=server.url, checksums={}, **kwargs)
    assert server.requests == [] and not (tmp_path / "d").exists()


def test_download_accepts_numpy_time_limits_and_no_deadline(server, tmp_path):
    make_mnist(server.root)
    result = download_mnist(tmp_path / "d", base_url=server.url, checksums={},
                            timeout=np.float64(5), deadline=None)
    assert result == digests(server.root)
    result = download_mnist(tmp_path / "e", base_url=server.url, checksums={},
                            timeout=np.int64(5), deadline=np.float32(60))
    assert result == digests(server.root)
