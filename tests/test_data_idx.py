"""jdnn.data.idx: the IDX format byte by byte, round trips, every corruption (headers whose
sizes overflow included), and loading MNIST-style directories. Downloading is tested in
test_data_download.py.
"""

import gzip

import numpy as np
import pytest

from jdnn.data.idx import MNIST_FILES, load_fashion_mnist, load_mnist, read_idx, write_idx

# --- the format ------------------------------------------------------------------------------


def test_read_idx_parses_hand_written_bytes(tmp_path):
    ubyte = tmp_path / "ubyte"
    ubyte.write_bytes(b"\0\0\x08\x02" + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
                      + bytes(range(6)))
    a = read_idx(ubyte)
    assert a.dtype == np.uint8 and a.shape == (2, 3)
    np.testing.assert_array_equal(a, [[0, 1, 2], [3, 4, 5]])
    short = tmp_path / "short"   # big-endian int16: 0x0100 = 256, 0xfffe = -2
    short.write_bytes(b"\0\0\x0b\x01" + (2).to_bytes(4, "big") + b"\x01\x00\xff\xfe")
    b = read_idx(short)
    assert b.dtype == np.int16 and b.dtype.isnative and b.flags.writeable
    np.testing.assert_array_equal(b, [256, -2])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("compress", [True, False])
def test_write_then_read_round_trips_exactly(tmp_path, dtype, compress):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = write_idx(tmp_path / "a.idx", array, compress=compress)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_compression_is_detected_by_content_not_by_name(tmp_path):
    array = np.arange(10, dtype=np.int32)
    gz_named_raw = write_idx(tmp_path / "raw.gz", array, compress=False)
    plain_named_gz = write_idx(tmp_path / "plain", array, compress=True)
    np.testing.assert_array_equal(read_idx(gz_named_raw), array)
    np.testing.assert_array_equal(read_idx(plain_named_gz), array)


def test_write_idx_is_deterministic_and_big_endian(tmp_path):
    a = write_idx(tmp_path / "a", np.array([1, 2], np.int32))
    b = write_idx(tmp_path / "b", np.array([1, 2], np.int32))
    assert a.read_bytes() == b.read_bytes()
    raw = gzip.decompress(a.read_bytes())
    assert raw == b"\0\0\x0c\x01" + (2).to_bytes(4, "big") + b"\0\0\0\x01\0\0\0\x02"


def test_write_idx_accepts_non_native_byte_order(tmp_path):
    array = np.array([1.5, -2.25], dtype=">f8")
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a", array)), array)


@pytest.mark.parametrize("array, match", [
    (np.arange(3, dtype=np.int64), r"write_idx: IDX cannot store dtype int64.*astype"),
    (np.array([True]), r"IDX cannot store dtype bool"),
    (np.float32(1.0), r"write_idx: IDX stores arrays of rank 1 to 255.*got shape \(\)"),
])
def test_write_idx_rejects_what_idx_cannot_hold(tmp_path, array, match):
    with pytest.raises(ValueError, match=match):
        write_idx(tmp_path / "a", array)


def header(code, dims):
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


@pytest.mark.parametrize("content, match", [
    (b"", r"is not an IDX file.*empty file"),
    (b"\x01\0\x08\x01" + bytes(8), r"is not an IDX file: it must start with two zero bytes"),
    (header(0x07, [2]) + bytes(2), r"unknown IDX type code 0x07; known codes are 0x08 uint8"),
    (header(0x08, [2, 3])[:9], r"declares 2 dimensions, which need a 12-byte header, but the "
                               r"file holds only 9 bytes"),
    (header(0x08, [2, 3]) + bytes(5), r"is truncated: its header declares shape \(2, 3\) of "
                                      r"uint8, i.e. 6 data bytes, but the file holds 5"),
    (header(0x0C, [2]) + bytes(9), r"is too long: .* i.e. 8 data bytes, but the file holds 9"),
])
def test_read_idx_names_the_file_and_the_problem(tmp_path, content, match):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"read_idx: .*bad-idx1-ubyte") as info:
        read_idx(path)
    assert info.match(match)


def test_read_idx_reports_a_truncated_gzip_and_gzipped_byte_counts(tmp_path):
    good = write_idx(tmp_path / "a.gz", np.arange(1000, dtype=np.int32))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(good.read_bytes()[:-20])
    with pytest.raises(ValueError, match=r"cut.gz is a corrupt or truncated gzip file"):
        read_idx(cut)
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(header(0x08, [4]) + bytes(3)))
    with pytest.raises(ValueError, match=r"4 data bytes, but the file holds 3 data .*uncompressed"):
        read_idx(short)


BIG = 2**31 - 1


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("dims, code, match", [
    ([BIG] * 4, 0x08, r"its header declares shape \(2147483647, 2147483647, 2147483647, "
                      r"2147483647\) of uint8, whose dimensions multiply to 2.13e\+37 bytes, "
                      r"more than any array can hold; delete the file"),
    ([0, BIG, BIG, BIG], 0x08, r"its header declares shape \(0, 2147483647, 2147483647, "
                               r"2147483647\) of uint8, whose nonzero dimensions multiply to "
                               r"9.9e\+27 bytes"),
    ([2**20, 2**20, 2**20], 0x0E, r"its header declares shape \(1048576, 1048576, 1048576\) "
                                  r"of float64, whose dimensions multiply to 9.22e\+18 bytes"),
    ([2, 0xFFFFFFFF], 0x08, r"its header declares shape \(2, 4294967295\) of uint8, but IDX "
                            r"dimensions are int32, below 2\*\*31"),
], ids=["four_int32_max", "zero_and_huge", "float64_past_intp", "negative_int32"])
def test_read_idx_rejects_dimensions_no_array_can_hold(tmp_path, compress, dims, code, match):
    content = header(code, dims) + bytes(16)
    path = tmp_path / "huge-idx4-ubyte"
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(ValueError, match=r"read_idx: .*huge-idx4-ubyte has a corrupt header: "
                                         + match):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_read_idx_a_header_past_the_file_size_is_truncated(tmp_path, compress):
    # 2**52 bytes (4 PiB) declared, 100 held: a clear error, no attempt to allocate.
    content = header(0x08, [2**20, 2**20, 2**12]) + bytes(100)
    path = tmp_path / "big-idx3-ubyte"
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(ValueError, match=r"big-idx3-ubyte is truncated: its header declares shape "
                                         r"\(1048576, 1048576, 4096\) of uint8, i.e. "
                                         r"4503599627370496 data bytes, but the file holds 100 "
                                         r"data bytes after the 16-byte header"):
        read_idx(path)


def test_read_idx_stops_decompressing_past_the_declared_size(tmp_path):
    path = tmp_path / "bomb.gz"   # 10 bytes declared, 4 MB of zeros behind them
    path.write_bytes(gzip.compress(header(0x08, [10]) + bytes(4 << 20)))
    with pytest.raises(ValueError, match=r"bomb.gz is too long: .* i.e. 10 data bytes, but the "
                                         r"file holds more than 10 data bytes after the 8-byte "
                                         r"header \(uncompressed\)"):
        read_idx(path)


def test_read_idx_empty_dimension(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(header(0x0D, [0, 28, 28]))
    array = read_idx(path)
    assert array.shape == (0, 28, 28) and array.dtype == np.float32


def test_read_idx_missing_file():
    with pytest.raises(FileNotFoundError):
        read_idx("/nonexistent/train-images-idx3-ubyte.gz")


# --- load_mnist ------------------------------------------------------------------------------


def make_mnist(directory, n_train=20, n_test=10, seed=0, compress=True, size=(28, 28)):
    """Writes four small MNIST-style files; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (n_train, *size), dtype=np.uint8),
              rng.integers(0, 10, n_train, dtype=np.uint8),
              rng.integers(0, 256, (n_test, *size), dtype=np.uint8),
              rng.integers(0, 10, n_test, dtype=np.uint8)]
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in zip(MNIST_FILES, arrays):
        write_idx(directory / (name if compress else name.removesuffix(".gz")), array,
                  compress=compress)
    return arrays


def test_load_mnist_nhwc_normalized(tmp_path):
    images, labels, test_images, test_labels = make_mnist(tmp_path)
    (x, y), (x_test, y_test) = load_mnist(tmp_path)
    assert x.shape == (20, 28, 28, 1) and x_test.shape == (10, 28, 28, 1)
    assert x.dtype == np.float32 and y.dtype == y_test.dtype == np.int32
    np.testing.assert_allclose(x[..., 0], images / 255.0, rtol=1e-6)
    np.testing.assert_allclose(x_test[..., 0], test_images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_array_equal(y_test, test_labels)
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_load_mnist_flat_unnormalized_from_raw_files(tmp_path):
    images, *_ = make_mnist(tmp_path, compress=False)
    (x, _), (x_test, _) = load_mnist(str(tmp_path), layout="flat", normalize=False)
    assert x.shape == (20, 784) and x_test.shape == (10, 784) and x.dtype == np.float32
    np.testing.assert_array_equal(x, images.reshape(20, 784))


def test_load_mnist_prefers_gz_and_accepts_other_image_sizes(tmp_path):
    make_mnist(tmp_path, n_train=5, compress=False)
    images, *_ = make_mnist(tmp_path, n_train=7, seed=1, size=(8, 6))
    (x, y), _ = load_mnist(tmp_path)
    assert x.shape == (7, 8, 6, 1) and y.shape == (7,)
    np.testing.assert_allclose(x[..., 0] * 255, images, atol=1e-4)


def test_load_fashion_mnist_reads_the_same_files(tmp_path):
    _, labels, *_ = make_mnist(tmp_path, seed=2)
    (x, y), _ = load_fashion_mnist(tmp_path, layout="flat")
    assert x.shape == (20, 784)
    np.testing.assert_array_equal(y, labels)


@pytest.mark.parametrize("loader, call", [
    (load_mnist, r"download_mnist\('.*'\)"),
    (load_fashion_mnist, r"download_mnist\('.*', fashion=True\)"),
])
def test_load_missing_files_names_them_and_points_to_download(tmp_path, loader, call):
    make_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        loader(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and loader.__name__ in message
    assert "train-images-idx3-ubyte, t10k-labels-idx1-ubyte" in message
    assert "train-labels" not in message
    assert info.match(call)


def replace_file(directory, index, array):
    write_idx(directory / MNIST_FILES[index], array)


@pytest.mark.parametrize("index, array, match", [
    (0, np.zeros((20, 784), np.uint8), r"must hold uint8 images of shape \(N, 28, 28\), got "
                                       r"uint8 of shape \(20, 784\)"),
    (0, np.zeros((20, 28, 28), np.float32), r"uint8 images .* got float32"),
    (1, np.zeros((20, 1), np.uint8), r"must hold uint8 labels of shape \(N,\)"),
    (3, np.zeros(9, np.uint8), r"holds 10 images but .*t10k-labels-idx1-ubyte.gz holds 9 labels"),
    (1, np.full(20, 10, np.uint8), r"holds labels up to 10, but digits/classes lie in \[0, 10\)"),
])
def test_load_mnist_rejects_inconsistent_files(tmp_path, index, array, match):
    make_mnist(tmp_path)
    replace_file(tmp_path, index, array)
    with pytest.raises(ValueError, match=r"load_mnist: .*" + match):
        load_mnist(tmp_path)


def test_load_mnist_rejects_a_bad_layout(tmp_path):
    make_mnist(tmp_path)
    with pytest.raises(ValueError, match=r'load_mnist: layout must be "nhwc"'):
        load_mnist(tmp_path, layout="nchw")
