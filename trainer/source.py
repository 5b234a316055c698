"""Reading the Animal-MNIST data files without the package's own loader.

The ``animal-mnist`` package's loader needs TensorFlow, so only its data files are
used: two gzip'd pickles of numpy arrays inside the installed package. A pickle can
run any code when loaded, so they are read with an unpickler that resolves only
the three numpy names an ndarray pickle needs and refuses everything else, and
the package is located with ``find_spec``, which does not run its ``__init__``.
"""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from trainer.errors import DatasetError, UnsafePickleError

__all__ = ["ANIMAL_CLASSES", "load_animal_mnist", "restricted_loads"]

# Class ids of the data files, alphabetical (checked by looking at the images).
ANIMAL_CLASSES: tuple[str, ...] = (
    "bear",
    "bird",
    "cat",
    "cow",
    "dog",
    "elephant",
    "giraffe",
    "horse",
    "sheep",
    "zebra",
)
_DATA_DIR = ("data", "Animal_MNIST")
_IMAGES_FILE = "animal_data_version_3.gz"
_LABELS_FILE = "animal_label_version_3.gz"
_MAX_PICKLE_BYTES = 64 * 1024 * 1024


def _numpy_globals() -> dict[tuple[str, str], Any]:
    # numpy 2 moved numpy.core to numpy._core and warns when the old name is touched,
    # so both spellings in a pickle resolve to whichever module this numpy has.
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        multiarray = importlib.import_module("numpy.core.multiarray")
    reconstruct = multiarray._reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class _NumpyUnpickler(pickle.Unpickler):
    """Resolves only the globals a plain ndarray pickle needs."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"pickle references {module}.{name}; only numpy arrays "
                "(numpy._reconstruct, numpy.ndarray, numpy.dtype) are allowed"
            ) from None


def restricted_loads(data: bytes) -> np.ndarray:
    """Unpickle a numpy array, refusing any other global the pickle names.

    Args:
        data: the pickle bytes (already decompressed).

    Returns:
        The array.

    Raises:
        UnsafePickleError: the pickle references a global other than numpy's array
            reconstruction names (for example ``os.system``).
        DatasetError: the bytes are not a valid pickle or do not hold an ndarray.
    """
    try:
        value = _NumpyUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except Exception as e:
        # A malformed pickle can fail in many ways (EOFError, UnpicklingError,
        # ValueError from numpy); all mean the same thing to us.
        raise DatasetError(f"not a valid numpy pickle: {e}") from e
    if not isinstance(value, np.ndarray):
        raise DatasetError(f"expected a pickled numpy array, got {type(value).__name__}")
    return value


def _package_data_dir() -> Path:
    # find_spec on a top-level package locates it without running its __init__.
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            "the animal-mnist package is not installed; install it with "
            "'pip install --no-deps animal-mnist==0.4'"
        )
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*_DATA_DIR)


def _read_array(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read(_MAX_PICKLE_BYTES + 1)
    except (OSError, EOFError) as e:
        raise DatasetError(f"cannot read {path}: {e}") from e
    if len(raw) > _MAX_PICKLE_BYTES:
        raise DatasetError(f"{path} unpacks to more than {_MAX_PICKLE_BYTES} bytes")
    return restricted_loads(raw)


def load_animal_mnist(data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read every Animal-MNIST image and label.

    Args:
        data_dir: the directory holding the two ``.gz`` files; by default the one
            inside the installed ``animal_mnist`` package.

    Returns:
        ``(images, labels)``: uint8 of shape (N, 28, 28) and int64 of shape (N,),
        labels indexing :data:`ANIMAL_CLASSES`.

    Raises:
        DatasetError: the package or a file is missing, or the arrays are malformed.
        UnsafePickleError: a file's pickle references a forbidden global.
    """
    directory = data_dir if data_dir is not None else _package_data_dir()
    images = _read_array(directory / _IMAGES_FILE)
    labels = _read_array(directory / _LABELS_FILE)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DatasetError(
            f"expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(images) or labels.dtype.kind not in "iu":
        raise DatasetError(
            f"expected {len(images)} integer labels, got {labels.dtype} {labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(ANIMAL_CLASSES)):
        raise DatasetError(f"labels should be 0..{len(ANIMAL_CLASSES) - 1}")
    return images, labels.astype(np.int64)
