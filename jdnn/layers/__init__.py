"""jdnn's layers: one file per family, every one obeying the contract in `jdnn.core`."""

from jdnn.layers.activations import Elu, Gelu, LeakyRelu, PRelu, Relu, Sigmoid, Softmax, Tanh
from jdnn.layers.attention import MultiHeadAttention
from jdnn.layers.combinators import branches, residual, serial
from jdnn.layers.conv import Conv2D
from jdnn.layers.conv1d import Conv1D
from jdnn.layers.dense import Dense
from jdnn.layers.dropout import Dropout
from jdnn.layers.embedding import Embedding, PositionalEmbedding
from jdnn.layers.normalization import BatchNorm, LayerNorm
from jdnn.layers.pooling import (AvgPool1D, AvgPool2D, GlobalAvgPool, GlobalMaxPool,
                                 MaxPool1D, MaxPool2D)
from jdnn.layers.recurrent import GRU, LSTM, SimpleRNN, bidirectional
from jdnn.layers.reshape import Flatten

__all__ = [
    "AvgPool2D", "BatchNorm", "branches", "Conv2D", "Dense", "Dropout", "Elu", "Embedding",
    "Flatten", "Gelu", "LayerNorm", "LeakyRelu", "MaxPool2D", "MultiHeadAttention",
    "PositionalEmbedding", "PRelu", "Relu", "Sigmoid", "Softmax", "Tanh", "residual", "serial",
    "AvgPool1D", "Conv1D", "GlobalAvgPool", "GlobalMaxPool", "MaxPool1D",
    "bidirectional", "GRU", "LSTM", "SimpleRNN",
]
