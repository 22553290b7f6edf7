"""File-format readers: IDX (MNIST, Fashion-MNIST), CIFAR-10 batches, ImageFolder trees.

Every reader returns in-memory tensors: images as uint8 ``[N, C, H, W]``, labels as int64
``[N]``. Nothing here touches the network. CIFAR-10's python batches are pickles, read by a
restricted :class:`pickle.Unpickler` that resolves only numpy's array-reconstruction globals
(to validating stand-ins) and refuses every other global (see :mod:`dmlcli.readers.cifar`).

- :mod:`dmlcli.readers.idx`: :func:`read_idx_dir`, x uint8 ``[N, 1, H, W]``, y int64 ``[N]``
- :mod:`dmlcli.readers.cifar`: :func:`read_cifar10`, x uint8 ``[N, 3, 32, 32]``, y int64 ``[N]``
- :mod:`dmlcli.readers.image_folder`: :func:`read_image_folder`, x uint8 ``[N, 3, S, S]``,
  y int64 ``[N]`` and the class names

A missing, truncated or corrupt file raises :class:`~dmlcli.errors.DmlError` with one line
that names the file and says what to do (:func:`missing_files_message` for missing ones).
"""

from dmlcli.readers._common import IDX_FILES, IMAGE_EXTENSIONS, SPLITS, missing_files_message
from dmlcli.readers.cifar import CIFAR10_TEST_BATCHES, CIFAR10_TRAIN_BATCHES, read_cifar10
from dmlcli.readers.idx import read_idx_dir
from dmlcli.readers.image_folder import read_image_folder

__all__ = [
    "CIFAR10_TEST_BATCHES",
    "CIFAR10_TRAIN_BATCHES",
    "IDX_FILES",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "missing_files_message",
    "read_cifar10",
    "read_idx_dir",
    "read_image_folder",
]
