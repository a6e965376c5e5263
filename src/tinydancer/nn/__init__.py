"""The network and how it learns: the FastGRNN cell, its files, data, losses, Adam, training, compression."""
