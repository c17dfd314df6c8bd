"""Static checks of the deployment files: Dockerfile, KubeRay manifests, nightly CronJob, local stack.

There is no Docker engine and no Kubernetes where these tests run, so nothing here builds the image,
pulls a base image, applies a manifest or starts a container. Not checked, therefore: that the image
builds and that the rayproject/ray, MinIO, Prometheus and Grafana tags exist in their registries;
that the KubeRay operator's CRD schema and webhooks accept the manifests and pods schedule onto GPU
nodes; that `docker compose config` accepts the Compose file and the containers start and reach one
another. Each of those needs the real tool.

Checked: every YAML file under deploy/ parses; the fields KubeRay v1 requires of RayCluster and
RayJob are there and consistent (replica bounds, exactly one cluster source per RayJob); every Ray
version in them, and the Dockerfile's base image, equals the `ray` pin of pyproject.toml and its
Python; every `amnst` image is tagged with the project version; the GPU workers request
`nvidia.com/gpu`; /dev/shm is memory-backed and large enough for the object store; token
authentication is on and no secret value is written in a file; the RayJob entrypoints name scripts
that exist and options those scripts accept; TensorFlow comes from pyproject.toml's `cpu` or `gpu`
extra, both of one version, `make` installs the cpu one and the Dockerfile the one TF_FLAVOR names
(its heredoc is run here); the Dockerfile installs from pyproject.toml as a numeric non-root user
with an allow-list build context; the Compose stack's mounts and build context exist, and its
Prometheus and Grafana mounts agree with the configuration files that are mounted.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
SCHEDULE = DEPLOY / "schedule"
COMPOSE_FILE = DEPLOY / "compose" / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT_VERSION = PYPROJECT["project"]["version"]


def _ray_pin() -> str:
    for requirement in PYPROJECT["project"]["dependencies"]:
        match = re.fullmatch(r"ray(\[[^\]]*\])?==([\w.]+)", requirement.replace(" ", ""))
        if match:
            return match.group(2)
    raise AssertionError("pyproject.toml does not pin ray==X")


def _python_tag() -> str:
    """`py311` for requires-python ">=3.11,<3.12": the tag of the official Ray images."""
    match = re.search(r">=\s*3\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert match, "requires-python has no lower bound"
    return f"py3{match.group(1)}"


RAY_VERSION = _ray_pin()
PY_TAG = _python_tag()
RAY_AUTH_SECRET = "amnst-ray-auth"
# The data key KubeRay reads the token from (its RAY_AUTH_TOKEN_SECRET_KEY); clients must use it too.
RAY_AUTH_SECRET_KEY = "auth_token"
LONG_LIVED_CLUSTER = "amnst"
RAYJOB_SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "SidecarMode", "InteractiveMode"}


# --------------------------------------------------------------------------- loading


def _yaml_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def _documents(path: Path) -> list[Any]:
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def _kube_documents() -> list[tuple[Path, dict]]:
    """Every Kubernetes object of deploy/kuberay and deploy/schedule (the latter may not exist yet)."""
    return [(path, doc) for folder in (KUBERAY, SCHEDULE) if folder.is_dir()
            for path in _yaml_files(folder) for doc in _documents(path)]


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (dotted path, value) pair under node, depth first."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}[{index}]")


def _ray_cluster_specs() -> list[tuple[str, dict]]:
    """Every RayClusterSpec: of RayClusters, inside RayJobs, RayCronJobs and RayServices alike."""
    specs = []
    for path, doc in _kube_documents():
        for where, node in _walk(doc):
            if isinstance(node, dict) and "headGroupSpec" in node:
                specs.append((f"{path.relative_to(ROOT)}:{doc['kind']}/{doc['metadata']['name']}:{where}", node))
    return specs


def _ray_job_specs() -> list[tuple[str, dict]]:
    """Every RayJobSpec, also one nested in a RayCronJob's template."""
    specs = []
    for path, doc in _kube_documents():
        for where, node in _walk(doc):
            if (isinstance(node, dict) and "entrypoint" in node
                    and ({"rayClusterSpec", "clusterSelector", "submissionMode"} & node.keys())):
                specs.append((f"{path.relative_to(ROOT)}:{doc['kind']}/{doc['metadata']['name']}:{where}", node))
    return specs


def _groups(spec: dict) -> list[tuple[str, dict]]:
    return [("head", spec["headGroupSpec"])] + [
        (group.get("groupName", "?"), group) for group in spec.get("workerGroupSpecs") or []]


def _image_name_tag(image: str) -> tuple[str, str]:
    """("rayproject/ray", "2.60.0-py311-gpu") from "rayproject/ray:2.60.0-py311-gpu"; a registry
    prefix stays in the name."""
    name, _, tag = image.rpartition(":")
    if "/" in tag or not name:  # "host:5000/image" without a tag
        return image, ""
    return name, tag


def _quantity(value: Any) -> float:
    """A Kubernetes quantity ("48Gi", "500m", 8) in base units."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
             "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value).strip())
    assert match and (match.group(2) in units or match.group(2) == ""), f"not a quantity: {value!r}"
    return float(match.group(1)) * units.get(match.group(2), 1)


def _byte_value(value: Any) -> float:
    """A Compose byte value ("2gb", "512m"), read in powers of 1000: a lower bound whichever base
    the engine uses."""
    match = re.fullmatch(r"([0-9.]+)\s*([kmg]?)b?", str(value).strip().lower())
    assert match, f"not a byte value: {value!r}"
    return float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2)]


# --------------------------------------------------------------------------- Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str, str]]:
    """(INSTRUCTION, arguments, heredoc body) for each instruction, continuations joined."""
    lines = DOCKERFILE.read_text().splitlines()
    instructions, index = [], 0
    while index < len(lines):
        line = lines[index].strip()
        index += 1
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\") and index < len(lines):
            follow = lines[index].strip()
            index += 1
            if follow.startswith("#"):
                continue
            line = line[:-1].rstrip() + " " + follow
        body = ""
        heredoc = re.search(r"<<-?'?\"?(\w+)'?\"?", line)
        if heredoc:
            end = heredoc.group(1)
            collected = []
            while index < len(lines) and lines[index].strip() != end:
                collected.append(lines[index])
                index += 1
            index += 1
            body = "\n".join(collected)
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip(), body))
    return instructions


def _dockerfile_from_image() -> str:
    args: dict[str, str] = {}
    for keyword, arguments, _ in _dockerfile_instructions():
        if keyword == "ARG" and "=" in arguments:
            name, _, default = arguments.partition("=")
            args[name.strip()] = default.strip().strip('"')
        if keyword == "FROM":
            image = arguments.split()[0]
            return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)
    raise AssertionError("Dockerfile has no FROM")


def _dockerfile_workdir() -> str:
    workdirs = [arguments for keyword, arguments, _ in _dockerfile_instructions() if keyword == "WORKDIR"]
    assert workdirs, "Dockerfile sets no WORKDIR"
    return workdirs[-1]


def test_dockerfile_base_is_the_official_ray_gpu_image_of_the_pins():
    name, tag = _image_name_tag(_dockerfile_from_image())
    assert name == "rayproject/ray"
    assert tag == f"{RAY_VERSION}-{PY_TAG}-gpu", "FROM must be the Ray pin, the project's Python, GPU"


def test_dockerfile_runs_as_a_numeric_non_root_user():
    users = [arguments for keyword, arguments, _ in _dockerfile_instructions() if keyword == "USER"]
    assert users, "the Dockerfile sets no USER"
    user = users[-1].split(":")[0]
    # Numeric: Kubernetes' runAsNonRoot refuses an image whose user it cannot tell is not root.
    assert user.isdigit() and int(user) != 0, f"final USER {users[-1]!r} is root or not numeric"


def test_dockerfile_installs_the_pinned_dependencies_of_pyproject_and_bakes_in_the_code():
    instructions = _dockerfile_instructions()
    copied = {source for keyword, arguments, _ in instructions if keyword == "COPY"
              for source in shlex.split(arguments)[:-1] if not source.startswith("--")}
    assert {"pyproject.toml", "amnst", "jobs"} <= copied
    runs = " ".join(arguments + "\n" + body for keyword, arguments, body in instructions if keyword == "RUN")
    assert "pyproject.toml" in runs and "pip install" in runs
    assert re.search(r"pip install [^\n]*--no-deps [^\n]*\.(\s|$)", runs), "the project itself is not installed"
    # No package is pinned in the Dockerfile itself: the pins are pyproject.toml's.
    for keyword, arguments, _ in instructions:
        if keyword == "RUN" and "pip install" in arguments:
            assert not re.search(r"[A-Za-z][\w.\-\[\]]*==\d", arguments), f"pin outside pyproject.toml: {arguments}"


TF_EXTRAS = {"cpu": "tensorflow-cpu", "gpu": "tensorflow[and-cuda]"}


def _tensorflow_pins(requirements: list[str]) -> list[str]:
    return [r for r in requirements if re.match(r"tensorflow(-cpu)?(\[|==|$)", r.replace(" ", ""))]


def test_tensorflow_comes_from_a_cpu_or_gpu_extra_of_one_version():
    """Base dependencies hold no TensorFlow (Keras stays pinned there); each extra pins one build of
    one version, so a GPU install and the CPU .venv cannot drift."""
    dependencies = PYPROJECT["project"]["dependencies"]
    assert not _tensorflow_pins(dependencies), "TensorFlow belongs in the cpu and gpu extras"
    assert any(re.fullmatch(r"keras==[\w.]+", d) for d in dependencies), "keras is not pinned in base deps"
    extras = PYPROJECT["project"]["optional-dependencies"]
    versions = set()
    for extra, package in TF_EXTRAS.items():
        pins = _tensorflow_pins(extras[extra])
        assert len(pins) == 1, f"extra {extra!r} must pin exactly one TensorFlow: {pins}"
        name, _, version = pins[0].replace(" ", "").partition("==")
        assert name == package and re.fullmatch(r"\d+\.\d+\.\d+", version), pins[0]
        versions.add(version)
    assert len(versions) == 1, f"the cpu and gpu extras pin different TensorFlow versions: {versions}"


def test_makefile_installs_the_cpu_extra_for_the_local_venv():
    installs = re.findall(r"pip install [^\n]*?-e '?\.\[([\w,]+)\]'?", (ROOT / "Makefile").read_text())
    assert installs, "the Makefile installs the project nowhere"
    for extras in installs:
        assert {"cpu", "dev"} <= set(extras.split(",")), f"make installs '.[{extras}]', not '.[cpu,dev]'"
        assert "gpu" not in extras.split(","), "the cpu and gpu extras are alternatives"


def test_dockerfile_tf_flavor_defaults_to_the_gpu_extra():
    args = {arguments.partition("=")[0]: arguments.partition("=")[2]
            for keyword, arguments, _ in _dockerfile_instructions() if keyword == "ARG"}
    assert args.get("TF_FLAVOR") == "gpu", "the default image (rayproject/ray ...-gpu) wants TensorFlow's CUDA build"


@pytest.mark.parametrize("flavor", ["gpu", "cpu"])
def test_dockerfile_requirements_are_pyproject_pins_with_the_extra_of_tf_flavor(flavor):
    """Runs the Dockerfile's own heredoc that turns pyproject.toml into the image's requirements:
    the base dependencies and those of the extra TF_FLAVOR names, as `pip install '.[FLAVOR]'`."""
    scripts = [body for keyword, arguments, body in _dockerfile_instructions()
               if keyword == "RUN" and body and "tomllib" in body]
    assert len(scripts) == 1, "expected one RUN heredoc reading pyproject.toml"
    result = subprocess.run([sys.executable, "-"], input=scripts[0], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, "TF_FLAVOR": flavor}, timeout=60)
    assert result.returncode == 0, result.stderr
    requirements = result.stdout.split()
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert requirements == PYPROJECT["project"]["dependencies"] + extras[flavor]
    assert [p.partition("==")[0] for p in _tensorflow_pins(requirements)] == [TF_EXTRAS[flavor]]


def test_dockerfile_refuses_an_unknown_tf_flavor():
    scripts = [body for keyword, arguments, body in _dockerfile_instructions()
               if keyword == "RUN" and body and "tomllib" in body]
    result = subprocess.run([sys.executable, "-"], input=scripts[0], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, "TF_FLAVOR": "dev"}, timeout=60)
    assert result.returncode != 0 and "TF_FLAVOR" in result.stderr and not result.stdout


def test_dockerfile_bakes_in_no_credentials():
    for keyword, arguments, _ in _dockerfile_instructions():
        if keyword in ("ENV", "ARG"):
            assert not re.search(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL)", arguments, re.I), arguments


def _glob_regex(pattern: str) -> str:
    """A .dockerignore pattern as a regular expression: `*` and `?` stay within one path segment,
    `**` spans any number of them."""
    regex, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            regex, i = regex + pattern[i:end + 1], end + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return regex


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _glob_regex(pattern.lstrip("!").strip("/"))
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_context_to_what_the_image_needs():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    for path in (".venv/bin/python", "out/audio/a.wav", ".git/config", ".pytest_cache/v/x",
                 "tests/test_cli.py", "amnst/__pycache__/cli.cpython-311.pyc", "amnst.egg-info/PKG-INFO",
                 ".env"):
        assert _dockerignored(path, patterns), f"{path} would be sent to the build"
    for path in ("pyproject.toml", "README.md", "amnst/cli/__init__.py", "jobs/nst_batch.py"):
        assert not _dockerignored(path, patterns), f"{path} would be left out of the build"


# --------------------------------------------------------------------------- every YAML file


ALL_DEPLOY_YAML = _yaml_files(DEPLOY)


@pytest.mark.parametrize("path", ALL_DEPLOY_YAML, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_deploy_yaml_parses(path):
    documents = _documents(path)
    assert documents, f"{path} holds no document"
    if path.is_relative_to(KUBERAY) or path.is_relative_to(SCHEDULE):
        for doc in documents:
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{path}: not a Kubernetes object"
            assert doc["metadata"].get("name"), f"{path}: {doc['kind']} without metadata.name"


def test_no_secret_values_are_written_in_the_manifests():
    for path, doc in _kube_documents():
        assert not (doc["kind"] == "Secret" and (doc.get("data") or doc.get("stringData"))), \
            f"{path}: a Secret with values; create it with kubectl instead"
        for where, node in _walk(doc):
            if isinstance(node, dict) and "name" in node and ("value" in node or "valueFrom" in node):
                if re.search(r"(TOKEN|SECRET|PASSWORD|ACCESS_KEY)", str(node["name"])):
                    assert "value" not in node, f"{path}:{where}: {node['name']} has a literal value"


# --------------------------------------------------------------------------- KubeRay


def test_kuberay_folder_holds_the_cluster_and_both_rayjobs():
    kinds = {(path.name, doc["kind"]) for path, doc in _kube_documents() if path.is_relative_to(KUBERAY)}
    assert ("raycluster.yaml", "RayCluster") in kinds
    assert ("rayjob-nst.yaml", "RayJob") in kinds
    assert ("rayjob-train.yaml", "RayJob") in kinds
    for path, doc in _kube_documents():
        if doc["kind"] in ("RayCluster", "RayJob", "RayCronJob", "RayService"):
            assert doc["apiVersion"] == "ray.io/v1", f"{path}: {doc['kind']} must be ray.io/v1"


def test_ray_cluster_specs_carry_the_fields_kuberay_v1_requires():
    specs = _ray_cluster_specs()
    assert specs
    for where, spec in specs:
        assert str(spec.get("rayVersion")) == RAY_VERSION, f"{where}: rayVersion must be {RAY_VERSION}"
        names = []
        for name, group in _groups(spec):
            assert isinstance(group.get("rayStartParams"), dict), f"{where}/{name}: rayStartParams"
            containers = group["template"]["spec"]["containers"]
            assert containers and all(c.get("name") and c.get("image") for c in containers), f"{where}/{name}"
            if name == "head":
                continue
            names.append(name)
            for field in ("groupName", "minReplicas", "maxReplicas"):
                assert field in group, f"{where}/{name}: {field} missing"
            low, high = group["minReplicas"], group["maxReplicas"]
            assert isinstance(low, int) and isinstance(high, int) and 0 <= low <= high, f"{where}/{name}"
            assert low <= group.get("replicas", low) <= high, f"{where}/{name}: replicas out of bounds"
        assert len(names) == len(set(names)), f"{where}: duplicate groupName"
        if spec.get("enableInTreeAutoscaling"):
            assert any(g["minReplicas"] < g["maxReplicas"] for _, g in _groups(spec)[1:]), \
                f"{where}: autoscaling with no group that can scale"


def test_ray_job_specs_carry_the_fields_kuberay_v1_requires():
    specs = _ray_job_specs()
    assert len(specs) >= 2
    for where, spec in specs:
        assert isinstance(spec["entrypoint"], str) and spec["entrypoint"].strip(), where
        assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), \
            f"{where}: exactly one of rayClusterSpec and clusterSelector"
        assert spec.get("submissionMode", "K8sJobMode") in RAYJOB_SUBMISSION_MODES, where
        if "clusterSelector" in spec:
            assert not spec.get("shutdownAfterJobFinishes"), f"{where}: would delete the shared cluster"
        if "ttlSecondsAfterFinished" in spec:
            assert spec.get("shutdownAfterJobFinishes"), f"{where}: the TTL only acts with shutdownAfterJobFinishes"
        if "runtimeEnvYAML" in spec:
            assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict), f"{where}: runtimeEnvYAML"


def test_every_ray_version_and_ray_image_matches_the_pin():
    found = 0
    for path in ALL_DEPLOY_YAML:
        for doc in _documents(path):
            for where, node in _walk(doc):
                if where.endswith("rayVersion"):
                    assert str(node) == RAY_VERSION, f"{path}:{where}"
                    found += 1
                if isinstance(node, str) and "rayproject/ray:" in node:
                    tag = _image_name_tag(node.split()[-1])[1]
                    assert tag.startswith(f"{RAY_VERSION}-{PY_TAG}"), f"{path}:{where}: {node}"
                    found += 1
    assert found


def _amnst_images() -> list[tuple[str, str]]:
    images = []
    for path in ALL_DEPLOY_YAML:
        for doc in _documents(path):
            for where, node in _walk(doc):
                if where.split(".")[-1] == "image" and isinstance(node, str):
                    name, tag = _image_name_tag(node)
                    if name.rsplit("/", 1)[-1] == "amnst":
                        images.append((f"{path.relative_to(ROOT)}:{where}", tag))
    return images


def test_amnst_images_are_tagged_with_the_project_version():
    images = _amnst_images()
    assert images
    for where, tag in images:
        allowed = {f"{PROJECT_VERSION}-cpu"} if where.startswith("deploy/compose/") else {PROJECT_VERSION}
        assert tag in allowed, f"{where}: tag {tag!r}, expected {sorted(allowed)}"


def test_ray_containers_run_the_project_image():
    for where, spec in _ray_cluster_specs():
        for name, group in _groups(spec):
            # KubeRay treats the first container as the Ray container.
            image = group["template"]["spec"]["containers"][0]["image"]
            assert _image_name_tag(image)[0].rsplit("/", 1)[-1] == "amnst", f"{where}/{name}: {image}"


def _ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]


def _gpus(group: dict) -> int:
    resources = _ray_container(group).get("resources", {})
    limit = resources.get("limits", {}).get("nvidia.com/gpu", 0)
    request = resources.get("requests", {}).get("nvidia.com/gpu", limit)
    assert request == limit, "an extended resource's request must equal its limit"
    return int(limit)


def test_long_lived_cluster_has_a_cpu_head_and_an_autoscaling_gpu_group():
    clusters = [doc for _, doc in _kube_documents()
                if doc["kind"] == "RayCluster" and doc["metadata"]["name"] == LONG_LIVED_CLUSTER]
    assert len(clusters) == 1
    spec = clusters[0]["spec"]
    assert spec.get("enableInTreeAutoscaling") is True
    head = spec["headGroupSpec"]
    assert _gpus(head) == 0
    assert str(head["rayStartParams"].get("num-cpus")) == "0", "tasks should not run on the head"
    gpu_groups = [g for g in spec["workerGroupSpecs"] if _gpus(g) >= 1]
    assert gpu_groups, "no worker group requests nvidia.com/gpu"
    assert any(g["minReplicas"] == 0 and g["maxReplicas"] > 0 for g in gpu_groups)


def test_every_ray_group_has_a_memory_backed_dev_shm_sized_for_its_object_store():
    for where, spec in _ray_cluster_specs():
        for name, group in _groups(spec):
            pod = group["template"]["spec"]
            container = _ray_container(group)
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert "/dev/shm" in mounts, f"{where}/{name}: /dev/shm not mounted"
            volume = next(v for v in pod.get("volumes", []) if v["name"] == mounts["/dev/shm"])
            empty_dir = volume.get("emptyDir") or {}
            assert empty_dir.get("medium") == "Memory", f"{where}/{name}: /dev/shm is not memory-backed"
            store = group["rayStartParams"].get("object-store-memory")
            assert store is not None, f"{where}/{name}: object-store-memory not set"
            size = _quantity(empty_dir.get("sizeLimit", 0))
            assert int(store) <= size, f"{where}/{name}: /dev/shm smaller than the object store"
            memory = container.get("resources", {}).get("limits", {}).get("memory")
            assert memory and size < _quantity(memory), f"{where}/{name}: /dev/shm leaves no memory"


def test_token_authentication_is_on_and_clients_use_kuberays_secret_key():
    for where, spec in _ray_cluster_specs():
        assert (spec.get("authOptions") or {}).get("mode") == "token", f"{where}: token auth is off"
    cluster = next(doc for _, doc in _kube_documents()
                   if doc["kind"] == "RayCluster" and doc["metadata"]["name"] == LONG_LIVED_CLUSTER)
    assert cluster["spec"]["authOptions"].get("secretName") == RAY_AUTH_SECRET
    for path, doc in _kube_documents():
        for where, node in _walk(doc):
            if isinstance(node, dict) and node.get("name") == RAY_AUTH_SECRET and "key" in node:
                assert node["key"] == RAY_AUTH_SECRET_KEY, \
                    f"{path}:{where}: KubeRay keeps the token under {RAY_AUTH_SECRET_KEY!r}"


def test_ray_metrics_port_is_exposed_for_prometheus():
    for where, spec in _ray_cluster_specs():
        for name, group in _groups(spec):
            port = group["rayStartParams"].get("metrics-export-port")
            assert port is not None, f"{where}/{name}: no metrics-export-port"
            ports = {p.get("name"): p["containerPort"] for p in _ray_container(group).get("ports", [])}
            assert ports.get("metrics") == int(port), f"{where}/{name}: port `metrics` != {port}"


def _entrypoint_script(where: str, entrypoint: str) -> tuple[Path, list[str]]:
    words = shlex.split(entrypoint)
    assert words[0] in ("python", "python3"), f"{where}: entrypoint is not a Python script"
    workdir = PurePosixPath(_dockerfile_workdir())
    script = PurePosixPath(words[1])
    assert script.is_relative_to(workdir), f"{where}: {script} is not under the image's {workdir}"
    return ROOT / script.relative_to(workdir), words[2:]


def test_nst_rayjob_entrypoint_is_a_valid_amnst_run():
    from amnst.cli import build_parser

    jobs = [(w, s) for w, s in _ray_job_specs() if "nst_batch.py" in s["entrypoint"]]
    assert jobs, "no RayJob runs jobs/nst_batch.py"
    for where, spec in jobs:
        script, arguments = _entrypoint_script(where, spec["entrypoint"])
        assert script.is_file(), f"{where}: {script} does not exist"
        try:
            build_parser().parse_args(["run", *arguments])
        except SystemExit:
            pytest.fail(f"{where}: `amnst run` rejects {arguments}")


def test_train_rayjob_entrypoint_fits_its_cluster_and_the_script_accepts_it():
    jobs = [(w, s) for w, s in _ray_job_specs() if "train_cnn.py" in s["entrypoint"]]
    assert jobs, "no RayJob runs jobs/train_cnn.py"
    for where, spec in jobs:
        script, arguments = _entrypoint_script(where, spec["entrypoint"])
        options = dict(zip(arguments[::2], arguments[1::2]))
        assert {"--data", "--output", "--workers"} <= options.keys(), where
        wanted = int(options["--workers"]) * float(options.get("--gpus-per-worker", 0))
        cluster = spec["rayClusterSpec"]
        available = sum(g["maxReplicas"] * _gpus(g) for _, g in _groups(cluster)[1:])
        assert wanted <= available, f"{where}: {wanted} GPUs wanted, the cluster has {available}"
        assert script.is_file(), f"{where}: {script} does not exist"
        result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                                cwd=ROOT, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert result.returncode == 0, result.stderr
        for option in (a for a in arguments if a.startswith("--")):
            assert option in result.stdout, f"{where}: {script.name} has no {option}"


def test_schedule_manifests_use_the_project_image_and_the_long_lived_cluster():
    documents = [(p, d) for p, d in _kube_documents() if p.is_relative_to(SCHEDULE)]
    assert documents, "deploy/schedule/ has no manifest"
    # Versions and Secret keys are covered by the tests above for every manifest; here, what the
    # nightly CronJob adds: it submits to the long-lived cluster's head service.
    assert any(doc["kind"] == "CronJob" for _, doc in documents), "deploy/schedule/ has no CronJob"
    for path, doc in documents:
        for where, node in _walk(doc):
            if isinstance(node, str):
                for host in re.findall(r"([a-z0-9-]+)-head-svc", node):
                    assert host == LONG_LIVED_CLUSTER, f"{path}:{where}: {host}-head-svc is not the RayCluster"
            if where.split(".")[-1] == "image" and isinstance(node, str) and doc["kind"] == "CronJob":
                assert _image_name_tag(node)[0].rsplit("/", 1)[-1] == "amnst", f"{path}:{where}: {node}"


# --------------------------------------------------------------------------- Compose


COMPOSE = _documents(COMPOSE_FILE)[0]
SERVICES = COMPOSE["services"]


def _volume_entries(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, is_bind) for each volume of a service, short or long syntax."""
    entries = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        entries.append((source, target, source.startswith((".", "/", "~"))))
    return entries


BIND_MOUNTS = [(name, source, target) for name, service in SERVICES.items()
               for source, target, is_bind in _volume_entries(service) if is_bind]


def test_compose_runs_the_whole_local_stack():
    assert {"minio", "minio-init", "ray-head", "prometheus", "pushgateway", "grafana"} <= SERVICES.keys()
    init = SERVICES["minio-init"]
    assert "mb" in init["command"] and any(a.startswith("local/") for a in init["command"])
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is published beyond this machine"


@pytest.mark.parametrize("service,source,target", BIND_MOUNTS, ids=[f"{s}:{t}" for s, _, t in BIND_MOUNTS])
def test_compose_bind_mounts_exist(service, source, target):
    # deploy/prometheus/ and deploy/grafana/ are written alongside this stack: they must exist too.
    path = (COMPOSE_FILE.parent / source).resolve()
    assert path.exists(), f"{service} mounts {path.relative_to(ROOT)}, which does not exist"


def test_compose_ray_head_is_the_project_image_with_token_auth():
    head = SERVICES["ray-head"]
    build = head["build"]
    assert (COMPOSE_FILE.parent / build["context"]).resolve() == ROOT
    assert (ROOT / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
    name, tag = _image_name_tag(build["args"]["RAY_IMAGE"])
    assert (name, tag) == ("rayproject/ray", f"{RAY_VERSION}-{PY_TAG}-cpu")
    assert build["args"]["TF_FLAVOR"] == "cpu"
    command = " ".join(head["command"]) if isinstance(head["command"], list) else head["command"]
    for flag in ("ray start", "--head", "--block", "--dashboard-host=0.0.0.0"):
        assert flag in command, f"ray-head command lacks {flag}"
    store = re.search(r"--object-store-memory[= ](\d+)", command)
    assert store and int(store.group(1)) <= _byte_value(head["shm_size"]), "shm_size under the object store"
    env = head["environment"]
    assert env["RAY_AUTH_MODE"] == "token"
    assert str(env["RAY_AUTH_TOKEN"]).startswith("${RAY_AUTH_TOKEN"), "the token must come from the environment"


def test_compose_prometheus_reads_rays_service_discovery_file():
    head = {t: s for s, t, _ in _volume_entries(SERVICES["ray-head"])}
    prometheus = {t: s for s, t, _ in _volume_entries(SERVICES["prometheus"])}
    assert head.get("/tmp/ray") and prometheus.get("/tmp/ray") == head["/tmp/ray"], \
        "Prometheus must mount the head's Ray temp dir volume at /tmp/ray"


def _container_path(service: str, path: str, base: str) -> bool:
    """Whether `path` (relative to `base` inside the container) lies in one of the service's mounts."""
    full = PurePosixPath(base, path)
    return any(full == PurePosixPath(t) or full.is_relative_to(t) for _, t, _ in _volume_entries(SERVICES[service]))


def test_prometheus_config_files_are_inside_the_compose_mounts():
    config = DEPLOY / "prometheus" / "prometheus.yml"
    assert config.is_file(), f"{config} is missing"
    settings = _documents(config)[0]
    for pattern in settings.get("rule_files") or []:
        assert _container_path("prometheus", pattern, "/etc/prometheus"), f"rule_files {pattern} is not mounted"
    for job in settings.get("scrape_configs") or []:
        for sd in job.get("file_sd_configs") or []:
            for file in sd.get("files", []):
                assert _container_path("prometheus", file, "/etc/prometheus"), \
                    f"{job['job_name']}: file_sd {file} is not mounted in the prometheus service"


def test_grafana_provisioning_points_at_the_compose_mounts():
    provisioning = DEPLOY / "grafana" / "provisioning"
    assert provisioning.is_dir(), f"{provisioning} is missing"
    for path in _yaml_files(provisioning / "dashboards") if (provisioning / "dashboards").is_dir() else []:
        for doc in _documents(path):
            for provider in doc.get("providers") or []:
                folder = (provider.get("options") or {}).get("path")
                assert folder and _container_path("grafana", folder, "/"), \
                    f"{path.name}: dashboards path {folder} is not the mounted dashboards folder"
    for path in _yaml_files(provisioning / "datasources") if (provisioning / "datasources").is_dir() else []:
        for doc in _documents(path):
            for source in doc.get("datasources") or []:
                host = re.sub(r"^\w+://", "", str(source.get("url", ""))).split(":")[0].split("/")[0]
                assert host in _compose_host_names(), \
                    f"{path.name}: datasource {source.get('name')} at {host}, which no container answers to"


def _compose_host_names() -> set[str]:
    """Names that resolve on the stack's network: services with a network of their own, and aliases.
    A service in another's network namespace (network_mode: service:X) has no name of its own."""
    names = set()
    for name, service in SERVICES.items():
        if str(service.get("network_mode", "")).startswith("service:"):
            continue
        names.add(name)
        networks = service.get("networks") or {}
        for network in networks.values() if isinstance(networks, dict) else []:
            names.update((network or {}).get("aliases") or [])
    return names


def _prometheus_static_targets() -> dict[str, list[str]]:
    config = DEPLOY / "prometheus" / "prometheus.yml"
    assert config.is_file(), f"{config} is missing"
    return {job["job_name"]: [t for static in job.get("static_configs") or [] for t in static.get("targets", [])]
            for job in _documents(config)[0].get("scrape_configs") or []}


def test_compose_prometheus_reaches_its_localhost_targets():
    """prometheus.yml scrapes the driver and the Pushgateway at localhost: in the stack, Prometheus
    must then share the network namespace of the Ray head (where job drivers run), and so must the
    Pushgateway."""
    targets = _prometheus_static_targets()
    local = {job for job, hosts in targets.items()
             if any(h.split(":")[0] in ("localhost", "127.0.0.1") for h in hosts)}
    if not local:
        pytest.skip("prometheus.yml has no localhost target")
    assert SERVICES["prometheus"].get("network_mode") == "service:ray-head"
    if "pushgateway" in local:
        assert SERVICES["pushgateway"].get("network_mode") == "service:ray-head"
    published = {str(port).split(":")[-1] for port in SERVICES["ray-head"].get("ports", [])}
    assert {"9090", "9091"} <= published, "ray-head publishes the ports of the services in its namespace"


def test_driver_metrics_port_is_the_one_prometheus_scrapes():
    ports = {int(t.rsplit(":", 1)[1]) for t in _prometheus_static_targets().get("amnst-driver", [])}
    assert ports, "prometheus.yml has no amnst-driver targets"
    for where, spec in _ray_job_specs():
        words = shlex.split(spec["entrypoint"])
        if "--metrics-port" in words:
            port = int(words[words.index("--metrics-port") + 1])
            assert port in ports, f"{where}: --metrics-port {port} is not scraped ({sorted(ports)})"
    for where, spec in _ray_cluster_specs():
        for port in _ray_container(spec["headGroupSpec"]).get("ports", []):
            if port.get("name") == "amnst-metrics":
                assert port["containerPort"] in ports, f"{where}: amnst-metrics {port['containerPort']}"
