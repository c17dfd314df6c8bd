"""The seed CNN: architecture, initialisation, safe weight formats, original-weight import."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest

from amnst.engine import model
from amnst.cli import main
from tests.conftest import segments_of

# SEED_FACTS' layer table: output shape of every layer index.
EXPECTED_SHAPES = [
    (384, 431, 1), (384, 431, 1),
    (383, 430, 32), (192, 215, 32), (191, 214, 32), (96, 107, 32), (95, 106, 32), (48, 53, 32),
    (47, 52, 32), (24, 26, 32), (23, 25, 32), (12, 13, 32), (11, 12, 32), (6, 6, 32),
    (5, 5, 32), (5, 5, 32), (4, 4, 32), (4, 4, 32), (4, 4, 32), (4, 4, 32),
    (512,), (64,), (10,),
]


@pytest.fixture(scope="module")
def seed_cnn(seed_weights_npy, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "seed.weights.h5"
    return model.import_original_weights(seed_weights_npy, path), path


def test_architecture_matches_the_seed_table():
    cnn = model.build_model()
    assert [layer.output.shape[1:] for layer in cnn.layers] == EXPECTED_SHAPES
    assert cnn.count_params() == 62_670
    assert sum(int(np.prod(w.shape)) for w in cnn.non_trainable_weights) == 66
    assert [tuple(w.shape) for w in cnn.get_weights()] == model.WEIGHT_SHAPES


def _same_weights(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


def test_random_initialisation_is_seeded():
    first, again, other = model.build_model(0), model.build_model(0), model.build_model(1)
    assert _same_weights(first, again)
    assert not _same_weights(first, other)


def test_feature_extractor_gives_the_chosen_layers(music_and_rain):
    cnn = model.build_model()
    x = segments_of(music_and_rain[0], "default", 1, full=True)[..., None]
    extractor = model.feature_extractor(cnn, (0, 4, 16))
    outputs = extractor(x, training=False)
    assert [tuple(o.shape[1:]) for o in outputs] == [EXPECTED_SHAPES[i] for i in (0, 4, 16)]
    np.testing.assert_array_equal(outputs[0], x)
    with pytest.raises(ValueError, match="out of range"):
        model.feature_extractor(cnn, (23,))


def test_imported_weights_give_the_original_class_probabilities(seed_cnn, seed_weights_npy, music_and_rain):
    imported, path = seed_cnn
    original = model.build_model()
    # The reference: the file loaded the unsafe way, exactly as the research code did.
    weights = np.load(seed_weights_npy, allow_pickle=True).item()
    original.set_weights([weights[k] for k in range(len(weights))])
    x = segments_of(music_and_rain[0], "default", 1, full=True)[..., None]
    reference = original(x, training=False).numpy()
    np.testing.assert_allclose(imported(x, training=False).numpy(), reference, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(model.load_model(path)(x, training=False).numpy(), reference, rtol=1e-6, atol=1e-7)
    assert reference.shape == (1, 10) and np.isclose(reference.sum(), 1.0)


@pytest.mark.parametrize("name", ["w.weights.h5", "w.npz"])
def test_safe_formats_round_trip(seed_cnn, tmp_path, name):
    imported, _ = seed_cnn
    model.save_weights(imported, tmp_path / name)
    assert _same_weights(model.load_model(tmp_path / name), imported)


def _object_npy(payload: bytes) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|O", "fortran_order": False, "shape": ()})
    return buffer.getvalue() + payload


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_a_command_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    crafted = tmp_path / "evil.npy"
    crafted.write_bytes(_object_npy(pickle.dumps(_RunsACommand(marker), protocol=2)))
    with pytest.raises(model.WeightsError, match="refusing to unpickle"):
        model.read_original_weights(crafted)
    assert not marker.exists()
    # The CLI refuses it with a one-line error and writes nothing.
    assert main(["weights", "import", str(crafted), str(tmp_path / "out.npz")]) != 0
    assert not marker.exists() and not (tmp_path / "out.npz").exists()


def test_malformed_weight_files_are_rejected(tmp_path):
    wrong_keys = tmp_path / "keys.npy"
    np.save(wrong_keys, np.array({0: np.zeros(1, np.float32)}, dtype=object), allow_pickle=True)
    with pytest.raises(model.WeightsError, match="keys"):
        model.read_original_weights(wrong_keys)
    plain = tmp_path / "plain.npy"
    np.save(plain, np.zeros(3))
    with pytest.raises(model.WeightsError, match="object array"):
        model.read_original_weights(plain)
    wrong_shapes = tmp_path / "shapes.npz"
    np.savez(wrong_shapes, **{f"w{i:03d}": np.zeros(2, np.float32) for i in range(28)})
    with pytest.raises(model.WeightsError, match="shape"):
        model.load_model(wrong_shapes)
    with pytest.raises(model.WeightsError, match="weights import"):
        model.load_model(plain)


def test_weights_import_command(seed_weights_npy, tmp_path, capsys):
    out = tmp_path / "seed.npz"
    assert main(["weights", "import", str(seed_weights_npy), str(out)]) == 0
    assert "62670 parameters" in capsys.readouterr().out
    assert out.is_file()
