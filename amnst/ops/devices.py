"""TensorFlow's set-up in a worker process: thread pools and GPU memory growth.

``prepare_tensorflow`` is what every worker that builds the NST engine
(``amnst.batch.ray_runner.setup_worker``) or trains the CNN (``amnst.train.loop``) calls
before TensorFlow runs its first op. Both of its settings can only be made
before TensorFlow initialises its devices, once per process.

Memory growth is what lets fractional GPUs work (``--num-gpus-per-task 0.5``,
``--gpus-per-worker 0.5``): without it the first TensorFlow process on a card
maps nearly all of its memory and the second one fails to allocate. Ray's
logical GPUs (``ray.init(num_gpus=N)``, ``ray.cluster_utils``) have no memory,
so tests cannot show it; they check that the setter is called for every GPU.
``worker_env_vars`` is the belt to those braces: ``TF_FORCE_GPU_ALLOW_GROWTH=true``
in the job's runtime_env, for a worker whose TensorFlow starts before this set-up.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# TensorFlow reads it when it initialises a GPU: "true" or "false" override what the
# process configured (TensorFlow's gpu_device.cc); unset, the process's setting holds.
ALLOW_GROWTH_VAR = "TF_FORCE_GPU_ALLOW_GROWTH"
# Set by Ray's job supervisor for a submitted job's driver: the job's runtime_env as JSON.
_JOB_CONFIG_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"

# GPUs already reported as left without memory growth in this process: a worker
# runs set-up for every task, and one warning per device says it.
_reported: set[str] = set()


@dataclass(frozen=True)
class TensorflowSetup:
    """What ``prepare_tensorflow`` did: the pools' size, and per GPU, growth on or why not."""

    threads: int
    pools_sized: bool  # False: TensorFlow had started with other pools, which stay
    growing: tuple[str, ...]  # GPUs whose memory grows on demand
    left: tuple[tuple[str, str], ...]  # (GPU, why its memory growth was not set)


def prepare_tensorflow(cpus: float, *, inter_op: bool = True, gpus: Sequence[Any] | None = None,
                       set_memory_growth: Callable[[Any, bool], None] | None = None,
                       environ: Mapping[str, str] | None = None) -> TensorflowSetup:
    """Size TensorFlow's thread pools to ``cpus`` and turn on memory growth on every GPU.

    Call it in a worker process before TensorFlow runs an op. The intra-op pool
    (and the inter-op pool unless ``inter_op`` is false) gets ``ceil(cpus)``
    threads: TensorFlow sizes them to the whole machine otherwise. Pools that
    TensorFlow already started with stay as they are.

    ``gpus`` and ``set_memory_growth`` default to TensorFlow's
    ``tf.config.list_physical_devices("GPU")`` and
    ``tf.config.experimental.set_memory_growth``; tests pass their own, as
    there is no CUDA where they run. With no GPU it does nothing more.
    A GPU that TensorFlow initialised before this call cannot be changed
    (RuntimeError): that is logged as a warning, once per GPU and process,
    unless ``TF_FORCE_GPU_ALLOW_GROWTH=true`` made it grow anyway. Where the
    user decided otherwise, growth is left alone: ``TF_FORCE_GPU_ALLOW_GROWTH=false``,
    or a GPU split into logical devices with a memory limit.
    """
    import tensorflow as tf

    environ = os.environ if environ is None else environ
    threads = max(1, math.ceil(cpus))
    pools = tf.config.threading
    pools_sized = True
    if pools.get_intra_op_parallelism_threads() != threads:
        try:
            pools.set_intra_op_parallelism_threads(threads)
            if inter_op:
                pools.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pools_sized = False  # TensorFlow already started in this process: its pools stay as they are

    if gpus is None:
        gpus = tf.config.list_physical_devices("GPU")
    if set_memory_growth is None:
        set_memory_growth = tf.config.experimental.set_memory_growth
    forced = environ.get(ALLOW_GROWTH_VAR, "").strip().lower()
    growing, left = [], []
    for gpu in gpus:
        name = getattr(gpu, "name", str(gpu))
        if forced == "false":
            left.append((name, f"{ALLOW_GROWTH_VAR}=false"))
            continue
        try:
            set_memory_growth(gpu, True)  # a no-op where it is already on
        except RuntimeError as error:  # the device is initialised: its allocator is fixed
            if forced == "true":
                growing.append(name)  # initialised with growth, by the variable
                continue
            left.append((name, f"initialised before set-up ({error})"))
            if name not in _reported:
                _reported.add(name)
                logger.warning(
                    "%s: TensorFlow initialised this GPU before amnst's worker set-up, so memory growth "
                    "could not be turned on (%s). If it was initialised without growth, this process holds "
                    "nearly all of the card's memory and another task sharing the GPU (fractional "
                    "--num-gpus-per-task / --gpus-per-worker) will fail to allocate. Set %s=true in the "
                    "job's environment, or run nothing in TensorFlow before the set-up.",
                    name, error, ALLOW_GROWTH_VAR)
        except ValueError as error:  # split into logical devices by the user: their memory limits hold
            left.append((name, str(error)))
            logger.info("%s: memory growth left as configured: %s", name, error)
        else:
            growing.append(name)
    return TensorflowSetup(threads, pools_sized, tuple(growing), tuple(left))


def worker_env_vars(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment variables a job's workers need: ``TF_FORCE_GPU_ALLOW_GROWTH``.

    Its value is the driver's own where the driver has one (the user's choice),
    else ``true``. Empty where the submitted job's runtime_env sets it already:
    the workers get it from there, and Ray refuses a driver's runtime_env that
    names a variable of the job's again.
    """
    environ = os.environ if environ is None else environ
    job_config = json.loads(environ.get(_JOB_CONFIG_VAR) or "{}")
    job_env_vars = (job_config.get("runtime_env") or {}).get("env_vars") or {}
    if ALLOW_GROWTH_VAR in job_env_vars:
        return {}
    return {ALLOW_GROWTH_VAR: environ.get(ALLOW_GROWTH_VAR, "true")}


def job_runtime_env(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The runtime_env for ``ray.init`` of a driver that starts TensorFlow tasks (None: nothing to add)."""
    env_vars = worker_env_vars(environ)
    return {"env_vars": env_vars} if env_vars else None
