"""Input pipelines with `grain`, for data read batch by batch instead of held on the device.

    source (arrays | two IDX files | a folder of images)          records: examples by index
     -> epoch e's order: `epoch_order(key, e * steps_per_epoch, n)`, cut into batches
     -> batch i: gather (and decode) its examples -> optional `transform(x, y, rng)` (NumPy)
     -> grain: threads read ahead; `workers` processes do the gathering and decoding
     -> `(x, y)` NumPy batches, x float32 `(B, ...)`, y int32 `(B,)`

Batches, not examples, are grain's records: the order of an epoch is one NumPy permutation and
a batch is one fancy index into the data, where a per-example grain pipeline
(`shuffle().batch()`) would call Python per example and stack. The order is the one `jdnn.fit`
draws for arrays from the same key (`jdnn.data.epoch_order`), so a pipeline over arrays feeds
the same examples in the same steps as `fit(x, y)` does. The last batch of an epoch is short
(or dropped with `drop_remainder=True`), never filled with the next epoch's examples.

Everything a batch depends on is its index, so grain's iterator state (`get_state()`, a few
integers) is a position a run can save and restore (`set_state`) to continue from the same
batch (with the same number of workers, whose state it is).

Augmentations (`jdnn.data.augment`) are not applied here: they are JAX functions, and belong
inside the compiled step (`fit(..., augment=...)`), on the device, keyed by the step, where
they cost no host time and a resumed run redraws the same ones. Run in the pipeline they would
start a JAX backend in every worker process (on a GPU host, each contending for the device)
and occupy the very CPU cores that feed the step. Host-side work (decoding, NumPy crops) goes
in `transform`.

grain is an optional extra (`pip install jdnn[grain]`); it is imported only when a pipeline is
built, never by `import jdnn`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jdnn.data.batching import epoch_order, num_batches
from jdnn.data.idx import read_idx

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TRANSFORM_STREAM = 0x5452   # tags the transform's seed apart from the shuffle's
Batch = tuple[np.ndarray, np.ndarray]


def _grain():
    try:
        import grain
    except ImportError:
        raise ImportError("jdnn.data.pipeline needs grain, an optional extra: "
                          "pip install 'jdnn[grain]' (or pip install grain)") from None
    return grain


def _absl_flags_parsed() -> None:
    """grain <= 0.2.18 reads an Abseil flag in `mp_prefetch` and fails with
    `UnparsedFlagAccessError` in any program not started by `absl.app` (google/grain#1355,
    fixed by #1362): mark the flags parsed, with their defaults, unless the program parsed them.
    """
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


# ---------------------------------------------------------------------------------------------
# Sources: examples by index. Each is pickled to the worker processes, so files are read there.


class _Arrays:
    """Examples held in memory: `x (N, ...)`, `y (N,)`."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def take(self, indices: np.ndarray) -> Batch:
        return self.x[indices], self.y[indices]


class _IdxFiles:
    """An images IDX file `(N, H, W)` or `(N, H, W, C)` and a labels IDX file `(N,)`, checked
    when the pipeline is built; a worker process reads the files again instead of receiving
    the arrays pickled."""

    def __init__(self, images: Path, labels: Path):
        self.paths = (images, labels)
        self.arrays = self._read()

    def _read(self) -> Batch:
        images, labels = (read_idx(path) for path in self.paths)
        if images.ndim not in (3, 4):
            raise ValueError(f"pipeline: {self.paths[0]} must hold images (N, H, W) or "
                             f"(N, H, W, C), got shape {images.shape}")
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise ValueError(f"pipeline: {self.paths[1]} must hold integer labels (N,), got "
                             f"{labels.dtype} of shape {labels.shape}")
        if len(images) != len(labels):
            raise ValueError(f"pipeline: {self.paths[0]} holds {len(images)} images but "
                             f"{self.paths[1]} holds {len(labels)} labels")
        return (images[..., None] if images.ndim == 3 else images), labels

    def __getstate__(self) -> dict:
        return {"paths": self.paths}

    def __setstate__(self, state: dict) -> None:
        self.paths, self.arrays = state["paths"], None

    def __len__(self) -> int:
        return len(self.arrays[1])

    def take(self, indices: np.ndarray) -> Batch:
        if self.arrays is None:
            self.arrays = self._read()
        return self.arrays[0][indices], self.arrays[1][indices]


class _ImageFolder:
    """`root/<class name>/<image>`: PNG or JPEG files decoded with Pillow, labelled by the
    sorted index of their sub-folder's name (torchvision's `ImageFolder` convention)."""

    def __init__(self, root: Path, mode: str, size: tuple[int, int] | None):
        if not root.is_dir():
            raise FileNotFoundError(f"pipeline: {root} is not a directory; pass (x, y) arrays, "
                                    f"(images, labels) IDX files or a folder of class folders")
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        self.files = [(f, label) for label, name in enumerate(self.classes)
                      for f in sorted((root / name).iterdir())
                      if f.suffix.lower() in IMAGE_SUFFIXES]
        if not self.files:
            raise ValueError(f"pipeline: {root} holds no images: expected class folders "
                             f"root/<class>/<image> with suffixes {', '.join(IMAGE_SUFFIXES)}")
        self.mode, self.size = mode, size

    def __len__(self) -> int:
        return len(self.files)

    def _decode(self, path: Path) -> np.ndarray:
        from PIL import Image

        with Image.open(path) as image:
            image = image.convert(self.mode)
            if self.size is not None and image.size != self.size[::-1]:
                image = image.resize(self.size[::-1])
            array = np.asarray(image, np.uint8)
        return array[..., None] if array.ndim == 2 else array

    def take(self, indices: np.ndarray) -> Batch:
        images = [self._decode(self.files[i][0]) for i in indices]
        shapes = {image.shape for image in images}
        if len(shapes) > 1:
            raise ValueError(f"pipeline: the images of one batch differ in size "
                             f"({sorted(shapes)}); pass image_size=(height, width) to resize")
        return np.stack(images), np.array([self.files[i][1] for i in indices], np.int32)


def _source(source: Any, mode: str, image_size: tuple[int, int] | None):
    if isinstance(source, (str, os.PathLike)):
        return _ImageFolder(Path(source).expanduser(), mode, image_size)
    if isinstance(source, (tuple, list)) and len(source) == 2:
        if all(isinstance(s, (str, os.PathLike)) for s in source):
            return _IdxFiles(*(Path(s).expanduser() for s in source))
        x, y = np.asarray(source[0]), np.asarray(source[1])
        if y.ndim != 1 or len(x) != len(y) or x.ndim < 1:
            raise ValueError(f"pipeline: arrays must be x (N, ...) and y (N,) with the same N, "
                             f"got shapes {x.shape} and {y.shape}")
        return _Arrays(x, y)
    raise TypeError(f"pipeline: source must be (x, y) arrays, (images, labels) IDX file paths "
                    f"or the path of a folder of class folders, got {type(source).__name__}")


# ---------------------------------------------------------------------------------------------
# Batches by index: the one function grain calls, in whichever process reads.


class _Batches:
    """`batch(i)`: the i-th batch of the run, a pure function of `i` (and the fixed setup)."""

    def __init__(self, records, batch_size: int, words: np.ndarray | None, shuffle: bool,
                 drop_remainder: bool, layout: str, normalize: bool, transform: Callable | None):
        self.records, self.batch_size, self.words, self.shuffle = (records, batch_size, words,
                                                                   shuffle)
        self.n = len(records)
        self.steps = num_batches(self.n, batch_size, drop_remainder=drop_remainder)
        self.layout, self.normalize, self.transform = layout, normalize, transform
        self._epoch, self._order = -1, None

    def order(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:   # one permutation per epoch and process, kept while used
            self._order = (np.arange(self.n, dtype=np.int32) if not self.shuffle
                           else epoch_order(self.words, epoch * self.steps, self.n))
            self._epoch = epoch
        return self._order

    def __call__(self, index: int, element: Any = None) -> Batch:
        del element   # grain's map_with_index passes the range's value; the index says it all
        epoch, step = divmod(index, self.steps)
        start = step * self.batch_size
        x, y = self.records.take(self.order(epoch)[start:start + self.batch_size])
        if x.dtype == np.uint8 and self.normalize:
            x = x.astype(np.float32) / np.float32(255)
        x = x.astype(np.float32, copy=False)
        if self.layout == "flat":
            x = x.reshape(len(x), -1)
        y = y.astype(np.int32, copy=False)
        if self.transform is not None:
            words = () if self.words is None else (int(w) for w in self.words)
            seed = np.random.SeedSequence([*words, index, TRANSFORM_STREAM])
            x, y = self.transform(x, y, np.random.default_rng(seed))
        return x, y


def _key_words(key: Any) -> np.ndarray:
    """The raw words of a JAX key (typed or legacy uint32), or of `jax.random.key(seed)`."""
    import jax

    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        key = jax.random.key(int(key))
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    words = np.asarray(key)
    if words.dtype != np.uint32 or words.ndim != 1:
        raise TypeError(f"pipeline: key must be a JAX key (jax.random.key(0)) or an int seed, "
                        f"got {type(key).__name__} {getattr(key, 'shape', '')}")
    return words


class Pipeline:
    """An iterable of `(x, y)` NumPy batches built by `pipeline`; see there.

    Attributes:
        dataset: the grain `IterDataset` itself, to extend or iterate directly.
        steps_per_epoch: batches in one epoch.
        epochs: epochs it runs for (None: without end).
        classes: the class names of a folder of images (sorted sub-folder names), else None.
    """

    def __init__(self, dataset, steps_per_epoch: int, epochs: int | None,
                 classes: list[str] | None):
        self.dataset, self.steps_per_epoch = dataset, steps_per_epoch
        self.epochs, self.classes = epochs, classes

    def __iter__(self) -> Iterator[Batch]:
        """A fresh grain iterator from the first batch; `get_state()` / `set_state(state)`
        save and restore its position."""
        return iter(self.dataset)

    def __len__(self) -> int:
        """The batches of one epoch (what `fit` reads as its `steps_per_epoch`), whatever
        `epochs` is."""
        return self.steps_per_epoch

    def __repr__(self) -> str:
        return (f"Pipeline(steps_per_epoch={self.steps_per_epoch}, epochs={self.epochs}, "
                f"classes={self.classes})")


def pipeline(source: Any, batch_size: int, *, key: Any = None, shuffle: bool = True,
             epochs: int | None | str = "auto", drop_remainder: bool = False,
             layout: str = "nhwc", normalize: bool = True, transform: Callable | None = None,
             workers: int = 0, threads: int = 2, prefetch: int = 8, image_mode: str = "RGB",
             image_size: tuple[int, int] | None = None) -> Pipeline:
    """A grain input pipeline of `(x, y)` batches over arrays, IDX files or a folder of images.

    Each epoch draws a new order from `key` and the epoch (the order `jdnn.fit` draws for
    arrays with the same key), reads its batches ahead in `threads` threads and, with
    `workers > 0`, in that many processes. Every batch is a function of its index alone, so
    the iterator's `get_state()` / `set_state()` (grain's) resume at the same batch, with the
    same data (resume with the same number of workers: the state differs in form).

    Args:
        source: `(x, y)` arrays `(N, ...)` and `(N,)`; or `(images, labels)` paths of IDX
            files (gzipped or raw, as `jdnn.data.read_idx` reads them), images `(N, H, W)`
            or `(N, H, W, C)`; or the path of a folder `root/<class>/<image>.png|jpg`
            (labels: the sorted class folder names' indices, see `Pipeline.classes`).
        batch_size: examples per batch.
        key: a JAX key or an int seed; required when `shuffle` is True. Pass the run's
            `train_state.key` and the orders are those `fit` draws for the same data as arrays
            (with `drop_remainder=True` the trained parameters are bit-identical).
        shuffle: draw a new order each epoch; False keeps the source's order (evaluation).
        epochs: how many passes an iterator makes; None for no end. The default, `"auto"`,
            is no end when shuffling (training: `fit` reads one iterator, `len()` batches per
            epoch, each epoch in a new order; a new iterator would start again from epoch 0's
            order) and one pass when not (`evaluate`, `predict` read to the end).
        drop_remainder: drop each epoch's last, short batch instead of yielding it.
        layout: `"nhwc"` keeps the examples' shape (IDX and grey images get a channel axis,
            `(B, H, W, 1)`), `"flat"` gives `(B, prod(shape))`.
        normalize: divide uint8 pixels by 255 into `[0, 1]`; other dtypes are only cast.
        transform: optional NumPy function `transform(x, y, rng) -> (x, y)` applied to each
            batch where it is read (in the workers), `rng` a `np.random.Generator` seeded
            from `key` and the batch's index. Must be picklable when `workers > 0`.
        workers: worker processes (grain's `mp_prefetch`); 0 reads in this process.
        threads: reading threads per process (grain's `ReadOptions.num_threads`).
        prefetch: batches read ahead per process.
        image_mode: the Pillow mode images are converted to, `"RGB"` or `"L"` (grey).
        image_size: `(height, width)` to resize every image to; None requires equal sizes.

    Returns:
        A `Pipeline`: iterate it for `(x, y)` batches, x float32 `(B, ...)`, y int32 `(B,)`
        (the last batch of an epoch may be shorter unless `drop_remainder`); `len()` is the
        batches of one epoch.

    Raises:
        ImportError: if grain is not installed, saying how to install it.
        ValueError: for a bad `batch_size`, `epochs`, `layout`, `workers`, `threads` or
            `prefetch`, mismatched arrays or IDX files, a folder without images, or
            `shuffle=True` without a `key`.
        TypeError: for a source or key of the wrong kind.

    Examples:
        >>> train = jdnn.data.pipeline(("mnist/train-images-idx3-ubyte.gz",
        ...                             "mnist/train-labels-idx1-ubyte.gz"), 128,
        ...                            key=jax.random.key(0), workers=2)
        >>> it = iter(train)
        >>> x, y = next(it)                    # (128, 28, 28, 1) float32, (128,) int32
        >>> state = it.get_state()             # ... later: it.set_state(state)
        >>> jdnn.fit(model, train, ...)         # len(train) batches per epoch
    """
    grain = _grain()
    if epochs == "auto":
        epochs = None if shuffle else 1
    for name, value, low in (("batch_size", batch_size, 1), ("workers", workers, 0),
                             ("threads", threads, 0), ("prefetch", prefetch, 0),
                             ("epochs", 1 if epochs is None else epochs, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"pipeline: {name} must be an int >= {low}"
                             f"{' or None' if name == 'epochs' else ''}, got {value!r}")
    if layout not in ("nhwc", "flat"):
        raise ValueError(f'pipeline: layout must be "nhwc" or "flat", got {layout!r}')
    if shuffle and key is None:
        raise ValueError("pipeline: shuffle=True needs the run's key: pass key=jax.random.key(0) "
                         "(or an int seed), or shuffle=False to keep the source's order")
    records = _source(source, image_mode, image_size)
    if drop_remainder and len(records) < batch_size:
        raise ValueError(f"pipeline: drop_remainder=True with batch_size {batch_size} > "
                         f"{len(records)} examples leaves no batch")
    batches = _Batches(records, batch_size, None if key is None else _key_words(key), shuffle,
                       drop_remainder, layout, normalize, transform)
    indices = grain.MapDataset.range(batches.steps).repeat(epochs)
    dataset = indices.map_with_index(batches).to_iter_dataset(
        grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch))
    if workers:
        _absl_flags_parsed()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return Pipeline(dataset, batches.steps, epochs, getattr(records, "classes", None))
