"""GPU memory growth in the workers' TensorFlow set-up (amnst.ops.devices).

There is no CUDA here, and Ray's logical GPUs have no memory, so what a card does when two processes
share it cannot be shown: these tests hold the set-up to calling TensorFlow's setter for every GPU
it is given (TensorFlow's own PhysicalDevice records, faked by injection), to reporting a GPU it
could not change, and the runner's drivers to giving their workers TF_FORCE_GPU_ALLOW_GROWTH=true.
"""

from __future__ import annotations

import json
import logging
import os

import pytest
import ray
import tensorflow as tf

import amnst.batch.ray_runner
from amnst.ops import devices
from amnst.ops.devices import ALLOW_GROWTH_VAR, job_runtime_env, prepare_tensorflow, worker_env_vars

# The pools as TensorFlow would size them anyway, so that this process's TensorFlow is left as it was.
CPUS = os.cpu_count() or 1


def fake_gpus(*indices: int) -> list[tf.config.PhysicalDevice]:
    return [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in indices]


class Setter:
    """Records calls like tf.config.experimental.set_memory_growth; raises ``error`` if given."""

    def __init__(self, error: Exception | None = None):
        self.calls: list[tuple[str, bool]] = []
        self.error = error

    def __call__(self, device: tf.config.PhysicalDevice, enable: bool) -> None:
        self.calls.append((device.name, enable))
        if self.error is not None:
            raise self.error


@pytest.fixture(autouse=True)
def fresh_reports(monkeypatch):
    monkeypatch.setattr(devices, "_reported", set())


def test_memory_growth_is_turned_on_for_every_gpu():
    gpus, setter = fake_gpus(0, 1), Setter()
    setup = prepare_tensorflow(CPUS, gpus=gpus, set_memory_growth=setter, environ={})
    assert setter.calls == [("/physical_device:GPU:0", True), ("/physical_device:GPU:1", True)]
    assert setup.growing == ("/physical_device:GPU:0", "/physical_device:GPU:1") and setup.left == ()
    assert setup.threads == CPUS


def test_without_gpus_the_set_up_changes_no_device():
    setter = Setter()
    setup = prepare_tensorflow(CPUS, gpus=[], set_memory_growth=setter, environ={})
    assert setter.calls == [] and setup.growing == () and setup.left == ()
    # TensorFlow's own device list on this machine: no GPU, nothing to do.
    assert tf.config.list_physical_devices("GPU") == []
    assert prepare_tensorflow(CPUS).growing == ()


def test_a_gpu_initialised_before_the_set_up_is_reported_once(caplog):
    gpus = fake_gpus(0)
    setter = Setter(RuntimeError("Physical devices cannot be modified after being initialized"))
    with caplog.at_level(logging.WARNING, logger="amnst.ops.devices"):
        first = prepare_tensorflow(CPUS, gpus=gpus, set_memory_growth=setter, environ={})
        second = prepare_tensorflow(CPUS, gpus=gpus, set_memory_growth=setter, environ={})
    assert first.growing == () and first.left[0][0] == "/physical_device:GPU:0"
    assert "initialised before set-up" in first.left[0][1] and second == first
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "a worker runs the set-up for every task: one warning per GPU"
    assert "/physical_device:GPU:0" in warnings[0] and f"{ALLOW_GROWTH_VAR}=true" in warnings[0]


def test_a_gpu_initialised_with_the_variable_set_grows_and_is_not_reported(caplog):
    setter = Setter(RuntimeError("Physical devices cannot be modified after being initialized"))
    with caplog.at_level(logging.WARNING, logger="amnst.ops.devices"):
        setup = prepare_tensorflow(CPUS, gpus=fake_gpus(0), set_memory_growth=setter,
                                   environ={ALLOW_GROWTH_VAR: "true"})
    assert setup.growing == ("/physical_device:GPU:0",) and setup.left == ()
    assert not caplog.records


def test_the_users_own_choices_are_left_alone():
    setter = Setter()
    opted_out = prepare_tensorflow(CPUS, gpus=fake_gpus(0), set_memory_growth=setter,
                                   environ={ALLOW_GROWTH_VAR: "false"})
    assert setter.calls == [] and opted_out.left == (("/physical_device:GPU:0", f"{ALLOW_GROWTH_VAR}=false"),)
    # A GPU split into logical devices with memory limits: TensorFlow refuses growth with ValueError.
    split = Setter(ValueError("Cannot set memory growth on device when virtual devices configured"))
    setup = prepare_tensorflow(CPUS, gpus=fake_gpus(0), set_memory_growth=split, environ={})
    assert setup.growing == () and "virtual devices" in setup.left[0][1]


def test_workers_get_allow_growth_unless_the_job_or_the_user_set_it():
    assert worker_env_vars({}) == {ALLOW_GROWTH_VAR: "true"}
    assert job_runtime_env({}) == {"env_vars": {ALLOW_GROWTH_VAR: "true"}}
    # The driver's own value is the user's choice, and travels to the workers.
    assert worker_env_vars({ALLOW_GROWTH_VAR: "false"}) == {ALLOW_GROWTH_VAR: "false"}
    # A submitted job whose runtime_env sets it: Ray refuses ray.init naming the variable again.
    job = json.dumps({"runtime_env": {"env_vars": {ALLOW_GROWTH_VAR: "true", "X": "1"}}})
    submitted = {"RAY_JOB_CONFIG_JSON_ENV_VAR": job, ALLOW_GROWTH_VAR: "true"}
    assert worker_env_vars(submitted) == {} and job_runtime_env(submitted) is None
    other = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {"working_dir": "gcs://x"}})}
    assert worker_env_vars(other) == {ALLOW_GROWTH_VAR: "true"}


def test_the_runners_driver_starts_its_workers_with_allow_growth(monkeypatch):
    calls = []
    monkeypatch.delenv(ALLOW_GROWTH_VAR, raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    amnst.batch.ray_runner.connect("local")
    assert calls[0]["address"] == "local"
    assert calls[0]["runtime_env"] == {"env_vars": {ALLOW_GROWTH_VAR: "true"}}
