"""jdnn.data.cifar: CIFAR-10's binary batches read from small files written here (layouts,
the channel-major to NHWC transpose, every validation error), and `download_cifar10` against a
tarball served on 127.0.0.1 (verified, extracted safely, not fetched twice)."""

import functools
import hashlib
import http.server
import io
import tarfile
import threading

import numpy as np
import pytest

from jdnn.data.cifar import (CIFAR10_FILES, CIFAR10_FOLDER, CIFAR10_MD5, RECORD,
                             download_cifar10, load_cifar10, read_cifar_batch)

N = 3   # records per file in the small files


def make_cifar(directory, records=N, seed=0):
    """Writes the six batch files with `records` random records each; returns their
    `(images (6, records, 3, 32, 32), labels (6, records))` as written."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (6, records, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, (6, records), dtype=np.uint8)
    directory.mkdir(parents=True, exist_ok=True)
    for name, im, lab in zip(CIFAR10_FILES, images, labels):
        rows = np.concatenate([lab[:, None], im.reshape(records, -1)], axis=1)
        (directory / name).write_bytes(rows.tobytes())
    return images, labels


def test_load_transposes_channel_major_records_to_nhwc(tmp_path):
    images, labels = make_cifar(tmp_path)
    (x, y), (x_test, y_test) = load_cifar10(tmp_path, records=N)
    assert x.shape == (5 * N, 32, 32, 3) and x.dtype == np.float32
    assert y.dtype == np.int32 and y_test.dtype == np.int32
    # Pixel (row 4, column 7) of channel 2 (blue) of the second record of data_batch_3.
    assert x[2 * N + 1, 4, 7, 2] == np.float32(images[2, 1, 2, 4, 7]) / 255
    np.testing.assert_array_equal(y, labels[:5].ravel())
    np.testing.assert_array_equal(x_test * 255, images[5].transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(y_test, labels[5])


def test_layouts_and_raw_pixels(tmp_path):
    images, _ = make_cifar(tmp_path)
    (x, _), _ = load_cifar10(tmp_path, layout="nchw", normalize=False, records=N)
    np.testing.assert_array_equal(x, images[:5].reshape(-1, 3, 32, 32))
    (flat, _), _ = load_cifar10(tmp_path, layout="flat", normalize=False, records=N)
    np.testing.assert_array_equal(flat[0], images[0, 0].transpose(1, 2, 0).ravel())


def test_missing_files_are_named(tmp_path):
    make_cifar(tmp_path)
    (tmp_path / "data_batch_4.bin").unlink()
    (tmp_path / "test_batch.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"load_cifar10: .* lacks data_batch_4.bin, "
                                                r"test_batch.bin; download them with "
                                                r"jdnn.data.download_cifar10"):
        load_cifar10(tmp_path, records=N)


def test_truncated_file_is_named(tmp_path):
    make_cifar(tmp_path)
    path = tmp_path / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match=rf"load_cifar10: .*data_batch_2.bin holds "
                                         rf"{N * RECORD - 5} bytes, but .* truncated or corrupt"):
        load_cifar10(tmp_path, records=None)


def test_official_record_count_is_required_by_default(tmp_path):
    make_cifar(tmp_path)
    with pytest.raises(ValueError, match=r"data_batch_1.bin holds 9219 bytes, but a CIFAR-10 "
                                         r"binary batch holds 10000 records of 3073 bytes"):
        load_cifar10(tmp_path)


def test_label_outside_0_to_9_is_an_error(tmp_path):
    make_cifar(tmp_path)
    path = tmp_path / "test_batch.bin"
    data = bytearray(path.read_bytes())
    data[RECORD] = 10   # the second record's label byte
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"test_batch.bin holds label 10 in record 1 .*outside "
                                         r"0..9"):
        read_cifar_batch(path, records=N)


def test_bad_layout_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r'load_cifar10: layout must be "nhwc"'):
        load_cifar10(tmp_path, layout="NHWC")


# --- download_cifar10 against a loopback server ----------------------------------------------


def tarball(source, extra=()):
    """The six files of `source` under cifar-10-batches-bin/, plus `extra` (TarInfo, bytes)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in CIFAR10_FILES:
            tar.add(source / name, arcname=f"{CIFAR10_FOLDER}/{name}")
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serves `tmp_path / "srv"` on 127.0.0.1 (no proxy); records GET paths."""
    for var in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    monkeypatch.setenv("no_proxy", "*")
    root = tmp_path / "srv"
    root.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/", requests
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def test_download_verifies_extracts_and_loads(server, tmp_path):
    root, url, requests = server
    images, _ = make_cifar(tmp_path / "made")
    body = tarball(tmp_path / "made")
    (root / "c.tar.gz").write_bytes(body)
    md5 = hashlib.md5(body).hexdigest()
    folder = download_cifar10(tmp_path / "d", url=url + "c.tar.gz", checksum=md5, timeout=5)
    assert folder == tmp_path / "d" / CIFAR10_FOLDER
    _, (x_test, _) = load_cifar10(tmp_path / "d", records=N)   # the folder above works too
    np.testing.assert_array_equal(x_test * 255, images[5].transpose(0, 2, 3, 1))
    sha = hashlib.sha256(body).hexdigest()
    assert download_cifar10(tmp_path / "d", url=url + "c.tar.gz", checksum=sha) == folder
    assert requests == ["/c.tar.gz"]   # the verified tarball on disk is not fetched again
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["c.tar.gz", CIFAR10_FOLDER]


def test_download_checksum_mismatch_keeps_nothing(server, tmp_path):
    root, url, _ = server
    make_cifar(tmp_path / "made")
    (root / "c.tar.gz").write_bytes(tarball(tmp_path / "made"))
    with pytest.raises(ValueError, match=r"c.tar.gz does not match its checksum: expected md5 "
                                         + CIFAR10_MD5):   # the published digest by default
        download_cifar10(tmp_path / "d", url=url + "c.tar.gz", timeout=5)
    assert list((tmp_path / "d").iterdir()) == []


def test_extraction_takes_only_the_batches_and_nothing_outside(server, tmp_path):
    root, url, _ = server
    make_cifar(tmp_path / "made")
    escape = tarfile.TarInfo(f"{CIFAR10_FOLDER}/../../escape.bin")
    escape.size = 4
    link = tarfile.TarInfo(f"{CIFAR10_FOLDER}/link.bin")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    absolute = tarfile.TarInfo(str(tmp_path / "absolute.bin"))
    absolute.size = 4
    (root / "c.tar.gz").write_bytes(tarball(tmp_path / "made", [(escape, b"evil"), (link, None),
                                                                (absolute, b"evil")]))
    folder = download_cifar10(tmp_path / "d", url=url + "c.tar.gz", checksum=None, timeout=5,
                              keep_archive=False)
    assert sorted(p.name for p in folder.iterdir()) == sorted(CIFAR10_FILES)
    assert not (tmp_path / "escape.bin").exists() and not (tmp_path / "absolute.bin").exists()
    assert [p.name for p in (tmp_path / "d").iterdir()] == [CIFAR10_FOLDER]


def test_a_tarball_without_the_batches_is_refused_and_leaves_no_folder(server, tmp_path):
    root, url, _ = server
    make_cifar(tmp_path / "made")
    (tmp_path / "made" / "data_batch_5.bin").unlink()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in CIFAR10_FILES[:4] + CIFAR10_FILES[5:]:
            tar.add(tmp_path / "made" / name, arcname=f"{CIFAR10_FOLDER}/{name}")
    (root / "c.tar.gz").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match=r"download_cifar10: .*c.tar.gz lacks "
                                         r"cifar-10-batches-bin/data_batch_5.bin"):
        download_cifar10(tmp_path / "d", url=url + "c.tar.gz", checksum=None, timeout=5)
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["c.tar.gz"]
