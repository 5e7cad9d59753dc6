"""Data: datasets as NumPy arrays `((x_train, y_train), (x_test, y_test))`, IDX/MNIST and
CIFAR-10 files on disk, device-resident batching with padding and masks, keyed augmentation,
grain input pipelines (optional extra) and the checks that stop bad data before training
starts."""

from jdnn.data import augment, text
from jdnn.data.batching import (batches_from_order, epoch_batches, epoch_order,
                                 num_batches)
from jdnn.data.cifar import download_cifar10, load_cifar10, read_cifar_batch
from jdnn.data.datasets import digits, moons, spirals, xor
from jdnn.data.download import download_mnist
from jdnn.data.idx import load_fashion_mnist, load_mnist, read_idx, write_idx
from jdnn.data.pipeline import Pipeline, pipeline
from jdnn.data.sequences import adding_problem, copy_task
from jdnn.data.validate import as_arrays, check_data, check_labels

__all__ = [
    "Pipeline", "adding_problem", "as_arrays", "augment", "batches_from_order", "check_data",
    "check_labels", "copy_task", "digits", "download_cifar10", "download_mnist", "epoch_batches",
    "epoch_order", "load_cifar10", "load_fashion_mnist", "load_mnist", "moons", "num_batches",
    "pipeline", "read_cifar_batch", "read_idx", "spirals", "text", "write_idx", "xor",
]
