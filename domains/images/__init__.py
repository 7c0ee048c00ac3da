"""The ``images`` domain plugin (entry point ``images = "domains.images:ImagesDomain"``):
sklearn digits (always available) and Fashion-MNIST (optional Debian package
``dataset-fashion-mnist``) with a diffusers ``UNet2DModel`` teacher."""
from .data import DATASETS, NULL_LABEL, DatasetUnavailable, fashion_mnist_available
from .domain import ImagesDomain

__all__ = ["ImagesDomain", "DATASETS", "NULL_LABEL", "DatasetUnavailable", "fashion_mnist_available"]
