"""The seed genre-classification CNN, its feature extractor, and its weights.

The architecture is the original research model (SEED_FACTS.md): an input of
``(384, 431, 1)`` mel frames, eight 2x2 convolutions of 32 filters with max
pooling, and a small dense head over ten GTZAN genres. Layer indices are
positions in ``model.layers`` (the Input is not counted); NST content and
style layers are chosen by them.
"""

from __future__ import annotations

import io
import pickle
import tempfile
from pathlib import Path

import keras
import numpy as np

GENRES = ("blues", "classical", "country", "disco", "hiphop",
          "jazz", "metal", "pop", "reggae", "rock")
INPUT_SHAPE = (384, 431, 1)
# Index -> layer, as in SEED_FACTS' table.
LAYER_TABLE = (
    "identity", "batchnorm1",
    "conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "conv4", "pool4",
    "conv5", "pool5", "conv6", "pool6", "conv7", "pool7", "conv8", "pool8",
    "batchnorm2", "dropout", "flatten", "dense1", "dense2",
)
# (in_channels, out_channels) of the eight convolutions; the pools of the
# last two keep their size (stride 1), as in the original.
_CONV_STRIDES = (2, 2, 2, 2, 2, 2, 1, 1)
WEIGHT_SHAPES = (
    [(1,)] * 4
    + [shape for c in range(8) for shape in (((2, 2, 1 if c == 0 else 32, 32)), (32,))]
    + [(32,)] * 4
    + [(512, 64), (64,), (64, 10), (10,)]
)


class WeightsError(ValueError):
    """A weight file that is unsafe, malformed or does not fit the model."""


def build_model(seed: int = 0) -> keras.Sequential:
    """The seed CNN with seeded Glorot-uniform kernels and zero biases."""
    def init(index: int) -> keras.initializers.Initializer:
        return keras.initializers.GlorotUniform(seed=seed * 1000 + index)

    layers: list[keras.layers.Layer] = [
        keras.Input(INPUT_SHAPE),
        keras.layers.Identity(name="identity"),
        keras.layers.BatchNormalization(name="batchnorm1"),
    ]
    for c, stride in enumerate(_CONV_STRIDES):
        layers.append(keras.layers.Conv2D(32, (2, 2), activation="relu", padding="valid",
                                          kernel_initializer=init(c), name=f"conv{c + 1}"))
        layers.append(keras.layers.MaxPooling2D((2, 2), strides=stride, padding="same",
                                                name=f"pool{c + 1}"))
    layers += [
        keras.layers.BatchNormalization(name="batchnorm2"),
        keras.layers.Dropout(0.3, seed=seed, name="dropout"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(64, activation="relu", kernel_initializer=init(8), name="dense1"),
        keras.layers.Dense(10, activation="softmax", kernel_initializer=init(9), name="dense2"),
    ]
    model = keras.Sequential(layers, name="seed_cnn")
    assert tuple(layer.name for layer in model.layers) == LAYER_TABLE
    return model


def feature_extractor(model: keras.Model, indices: tuple[int, ...]) -> keras.Model:
    """A model mapping the CNN input to the outputs of ``model.layers[i]`` for each index.

    Only the layers the outputs depend on are evaluated.
    """
    for index in indices:
        if not 0 <= index < len(model.layers):
            raise ValueError(f"layer index {index} out of range 0..{len(model.layers) - 1}")
    return keras.Model(model.inputs[0], [model.layers[i].output for i in indices])


def load_model_from_bytes(data: bytes, name: str, seed: int = 0) -> keras.Sequential:
    """The seed CNN with weights from a weight file's bytes (read from a URI, say).

    ``name``, the file's name or URI, gives its format by its ending and names
    it in errors. Keras loads weights only from a local file: the bytes go
    through a temporary one.
    """
    suffix = ".weights.h5" if name.endswith(".weights.h5") else Path(name).suffix
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / f"weights{suffix}"
        local.write_bytes(data)
        return load_model(local, seed=seed, name=name)


def load_model(weights: str | Path | None = None, seed: int = 0, name: str | None = None) -> keras.Sequential:
    """The seed CNN with weights from a safe file, or seeded random weights.

    ``name`` is what errors call the file (default: its path), e.g. the URI
    of a local copy.
    """
    model = build_model(seed)
    if weights is not None:
        load_weights(model, weights, name)
    return model


def load_weights(model: keras.Model, path: str | Path, name: str | None = None) -> None:
    """Load Keras ``.weights.h5`` or a pickle-free ``.npz`` written by :func:`save_weights`."""
    path = Path(path)
    name = name or str(path)
    if not path.is_file():
        raise WeightsError(f"{name}: no such weight file")
    if path.name.endswith(".weights.h5"):
        try:
            model.load_weights(path)
        except (ValueError, OSError) as error:
            raise WeightsError(f"{name}: cannot load Keras weights ({error})") from None
    elif path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = [archive[f"w{i:03d}"] for i in range(len(archive.files))]
        except (ValueError, KeyError, OSError) as error:
            raise WeightsError(f"{name}: not a weight archive of this project ({error})") from None
        set_weights(model, arrays, name)
    else:
        raise WeightsError(f"{name}: weights must be .weights.h5 or .npz "
                           "(import original .npy files with `amnst weights import`)")


def save_weights(model: keras.Model, path: str | Path) -> None:
    """Save as Keras ``.weights.h5`` or as ``.npz`` (arrays ``w000``..., no pickle)."""
    path = Path(path)
    if path.name.endswith(".weights.h5"):
        model.save_weights(path)
    elif path.suffix == ".npz":
        np.savez(path, **{f"w{i:03d}": w for i, w in enumerate(model.get_weights())})
    else:
        raise WeightsError(f"{path}: choose a .weights.h5 or .npz file name")


def set_weights(model: keras.Model, arrays: list[np.ndarray], source: str) -> None:
    """``model.set_weights`` after checking count, shapes and finiteness."""
    if len(arrays) != len(WEIGHT_SHAPES):
        raise WeightsError(f"{source}: {len(arrays)} arrays, the seed CNN has {len(WEIGHT_SHAPES)}")
    for index, (array, shape) in enumerate(zip(arrays, WEIGHT_SHAPES)):
        if tuple(array.shape) != shape:
            raise WeightsError(f"{source}: array {index} has shape {array.shape}, expected {shape}")
        if not np.all(np.isfinite(array)):
            raise WeightsError(f"{source}: array {index} holds non-finite values")
    model.set_weights([np.asarray(a, dtype=np.float32) for a in arrays])


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Admits NumPy arrays and dtypes (and plain containers, which need no lookup)."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise WeightsError(f"refusing to unpickle {module}.{name}: only NumPy arrays are allowed")
        return super().find_class(module, name)


def read_original_weights(path: str | Path) -> list[np.ndarray]:
    """Read the original research weight file without executing arbitrary code.

    The file is a 0-d ``.npy`` object array pickling ``{int: float32 ndarray}``
    in ``model.get_weights()`` order. Returns the arrays in key order.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise WeightsError(f"unsupported .npy format version {version}")
            shape, _, dtype = read_header(handle)
            if dtype != np.dtype(object) or shape != ():
                raise WeightsError(f"expected a pickled 0-d object array, got {dtype} {shape}")
            payload = _ArraysOnlyUnpickler(io.BytesIO(handle.read())).load()
    except WeightsError as error:
        raise WeightsError(f"{path}: {error}") from None
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, AttributeError, TypeError) as error:
        raise WeightsError(f"{path}: not a readable weight file ({error})") from None
    content = payload.item() if isinstance(payload, np.ndarray) and payload.shape == () else payload
    if not isinstance(content, dict) or sorted(content) != list(range(len(WEIGHT_SHAPES))):
        raise WeightsError(f"{path}: expected a dict with keys 0..{len(WEIGHT_SHAPES) - 1}")
    arrays = [content[key] for key in range(len(WEIGHT_SHAPES))]
    if not all(isinstance(a, np.ndarray) and a.dtype.kind == "f" for a in arrays):
        raise WeightsError(f"{path}: every weight must be a floating-point array")
    return arrays


def import_original_weights(source: str | Path, destination: str | Path) -> keras.Model:
    """Convert the original pickled weights to a safe format; returns the loaded model."""
    model = build_model()
    set_weights(model, read_original_weights(source), str(source))
    save_weights(model, destination)
    return model
