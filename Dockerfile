# syntax=docker/dockerfile:1
# AM-NST runtime image: the official Ray image, this project's pinned dependencies, and its code.
#
#   docker build -t amnst:0.1.0 .                                   # GPU (KubeRay, deploy/kuberay/)
#   docker build --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311-cpu \
#                --build-arg TF_FLAVOR=cpu -t amnst:0.1.0-cpu .     # CPU only (deploy/compose/)
#
# The tag is the project version of pyproject.toml, and the Ray and Python versions of RAY_IMAGE are
# its `ray[default]` pin and `requires-python`; tests/test_deploy.py holds all three together.
# Official Ray tags read {Ray version}-py{XY}-{cpu|gpu|cuXXX}, where -gpu aliases a CUDA build.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${RAY_IMAGE}

# The extra of pyproject.toml that brings TensorFlow. gpu: its CUDA build (`tensorflow[and-cuda]`,
# which brings CUDA 12 and cuDNN as pip wheels, so it only needs the node's NVIDIA driver). cpu:
# `tensorflow-cpu`, as `make` installs it for the local .venv. tests/test_deploy.py holds the two
# extras to one TensorFlow version.
ARG TF_FLAVOR=gpu

# Numeric, so that Kubernetes' runAsNonRoot can verify it (a user *name* cannot be checked). 1000:100
# is the `ray` user and `users` group the Ray image creates; its conda Python under /home/ray/anaconda3
# belongs to that user, so pip installs into it without root. The image's user has password-less sudo:
# the manifests set allowPrivilegeEscalation: false, which makes sudo inoperative.
USER 1000:100
# Made by that user (WORKDIR alone may create it root-owned), since `pip install .` writes build files in it.
RUN mkdir -p /home/ray/app
WORKDIR /home/ray/app

# Dependencies first, from pyproject.toml alone, so a code change reuses this (large) layer.
COPY --chown=1000:100 pyproject.toml ./
RUN python - > /tmp/requirements.txt <<'EOF'
import os
import tomllib

flavor = os.environ["TF_FLAVOR"]
if flavor not in ("gpu", "cpu"):
    raise SystemExit(f"TF_FLAVOR must be gpu or cpu, not {flavor!r}")
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extra = project.get("optional-dependencies", {}).get(flavor, [])
if not any(pin.startswith(("tensorflow==", "tensorflow[", "tensorflow-cpu==")) for pin in extra):
    raise SystemExit(f"pyproject.toml's extra {flavor!r} pins no TensorFlow: update the Dockerfile")
# The base dependencies, then the extra's: what `pip install '.[FLAVOR]'` installs.
for pin in project["dependencies"] + extra:
    print(pin)
EOF
RUN pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt

# The code. Installed without dependencies (they are the ones above); jobs/ stays here for
# `python /home/ray/app/jobs/<job>.py`, the RayJob entrypoints.
COPY --chown=1000:100 README.md ./
COPY --chown=1000:100 amnst ./amnst
COPY --chown=1000:100 jobs ./jobs
# /tmp/ray is Ray's default temp dir, made here as this user: a named volume mounted on it (the local
# stack shares it with Prometheus for Ray's file_sd targets) then starts out owned by it, not by root.
RUN pip install --no-cache-dir --no-deps . && mkdir -p /tmp/ray
# librosa's numba kernels, compiled into the image: workers compiling them at once crash (quality.py).
RUN python -c 'from amnst.engine import quality; quality.compile_kernels()'

# No credentials in the image: S3 keys and the Ray token come from the environment at run time
# (Kubernetes Secrets or IRSA, or the variables of the local stack).
ENV RAY_USAGE_STATS_ENABLED=0
