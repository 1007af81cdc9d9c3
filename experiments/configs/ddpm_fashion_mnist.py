"""DDPM on Fashion-MNIST: the MNIST recipe (``ddpm_mnist.py``) on "fashion_mnist".

Needs the prepared tfds data: `make data DATASET=fashion_mnist`.
"""

from experiments.configs import ddpm_mnist


def get_config():
    return ddpm_mnist.get_config("fashion_mnist")
