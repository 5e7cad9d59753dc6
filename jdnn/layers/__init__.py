"""jdnn's layers: one file per family, every one obeying the contract in `jdnn.core`."""

from jdnn.layers.activations import Elu, Gelu, LeakyRelu, PRelu, Relu, Sigmoid, Softmax, Tanh
from jdnn.layers.combinators import branches, residual, serial
from jdnn.layers.conv import Conv2D
from jdnn.layers.dense import Dense
from jdnn.layers.dropout import Dropout
from jdnn.layers.normalization import BatchNorm
from jdnn.layers.pooling import AvgPool2D, MaxPool2D
from jdnn.layers.reshape import Flatten

__all__ = [
    "AvgPool2D", "BatchNorm", "branches", "Conv2D", "Dense", "Dropout", "Elu", "Flatten", "Gelu",
    "LeakyRelu", "MaxPool2D", "PRelu", "Relu", "Sigmoid", "Softmax", "Tanh", "residual", "serial",
]
