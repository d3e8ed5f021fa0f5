"""The cluster manifests under cluster/: they parse, use the fields their tools know, run
the project image at the project's version and Ray at its pin, their jobs resolve as `mqt`
resolves them, and the GPUs the jobs ask for are GPUs the clusters have. No Ray starts."""

from __future__ import annotations

import posixpath
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

import pipeline.annotate
from jobs.cli import JOBS, load, parser, resolve
from mqt.configtree import ConfigError
from pipeline.sources import MANIFEST_SUFFIXES, Source
from pipeline.storage import locate

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
DOCKERFILE = CLUSTER / "Dockerfile"
LAUNCHER = CLUSTER / "ray-cluster.yaml"
SERVE_CONFIG = CLUSTER / "serve" / "mqt-smol.yaml"
DOCS = ROOT / "docs" / "cluster.md"

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
VERSION = PROJECT["version"]
PINS = dict(line.split("==", 1) for line in
            (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
            if "==" in line and not line.lstrip().startswith("#"))
RAY_PIN = PINS["ray"]

RAY_KINDS = {"RayCluster", "RayJob", "RayService"}
OTHER_KINDS = {("v1", "PersistentVolumeClaim")}  # what a manifest may hold besides them
GPU = "nvidia.com/gpu"
# The fields of KubeRay's v1 types (ray-operator/apis/ray/v1/*_types.go, ray-project/kuberay
# at feeaf72): a misspelt field is dropped by the API server without a word.
SPEC_FIELDS = {
    "RayCluster": {"upgradeStrategy", "authOptions", "suspend", "managedBy",
                   "autoscalerOptions", "headServiceAnnotations", "enableInTreeAutoscaling",
                   "gcsFaultToleranceOptions", "historyServerOptions", "networkPolicy",
                   "tlsOptions", "headGroupSpec", "rayVersion", "workerGroupSpecs"},
    "RayJob": {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec",
               "submitterPodTemplate", "metadata", "clusterSelector", "submitterConfig",
               "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML", "jobId",
               "submissionMode", "entrypointResources", "entrypointNumCpus",
               "entrypointNumGpus", "ttlSecondsAfterFinished", "preRunningDeadlineSeconds",
               "shutdownAfterJobFinishes", "suspend"},
    "RayService": {"rayClusterDeletionDelaySeconds", "serviceUnhealthySecondThreshold",
                   "deploymentUnhealthySecondThreshold", "serveService", "upgradeStrategy",
                   "managedBy", "serveConfigV2", "rayClusterConfig",
                   "excludeHeadPodFromServeSvc", "suspend"},
}
HEAD_FIELDS = {"template", "headService", "enableIngress", "ingressOptions", "resources",
               "labels", "rayStartParams", "serviceType"}
WORKER_FIELDS = {"suspend", "groupName", "replicas", "minReplicas", "maxReplicas",
                 "idleTimeoutSeconds", "priority", "resources", "labels", "rayStartParams",
                 "template", "scaleStrategy", "numOfHosts"}


# --- reading the files ---------------------------------------------------------------------

def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kuberay_files() -> list[Path]:
    return sorted(KUBERAY.glob("*.yaml"))


def ray_resources(kind: str | None = None) -> list[tuple[Path, dict]]:
    """(file, document) of every ray.io resource under cluster/kuberay/, of `kind` if given."""
    return [(p, d) for p in kuberay_files() for d in documents(p)
            if d.get("apiVersion") == "ray.io/v1" and kind in (None, d.get("kind"))]


def cluster_spec(resource: dict) -> dict:
    """The RayClusterSpec of a RayCluster, RayJob or RayService."""
    spec = resource["spec"]
    return {"RayCluster": lambda: spec, "RayJob": lambda: spec["rayClusterSpec"],
            "RayService": lambda: spec["rayClusterConfig"]}[resource["kind"]]()


def containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def quantity(value) -> float:
    """A Kubernetes CPU or count quantity: 3, "3", "500m"."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def pod_resource(group: dict, name: str) -> float:
    """What a group's pod holds of `name` (its containers' limits): what Ray advertises."""
    return sum(quantity(c.get("resources", {}).get("limits", {}).get(name, 0))
               for c in containers(group))


def gpu_groups(spec: dict) -> list[dict]:
    return [g for g in spec.get("workerGroupSpecs", []) if pod_resource(g, GPU) > 0]


def gpu_capacity(spec: dict) -> float:
    """GPUs of the cluster at its largest: every GPU group at maxReplicas."""
    return sum(g["maxReplicas"] * pod_resource(g, GPU) for g in gpu_groups(spec))


def images(node) -> list[str]:
    """Every `image:` of a manifest, at any depth (containers, autoscaler, submitter)."""
    if isinstance(node, dict):
        found = [node["image"]] if isinstance(node.get("image"), str) else []
        return found + [i for v in node.values() for i in images(v)]
    if isinstance(node, list):
        return [i for v in node for i in images(v)]
    return []


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of cluster/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip()
             .startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def dockerfile_args(instruction: str) -> list[str]:
    return [args for ins, args in dockerfile() if ins == instruction]


def project_dir() -> str:
    """Where the image holds the project (its last WORKDIR)."""
    return dockerfile_args("WORKDIR")[-1]


def image() -> str:
    """The project image every manifest runs (the launcher's docker.image)."""
    return yaml.safe_load(LAUNCHER.read_text())["docker"]["image"]


# --- resolving an entrypoint as `mqt` does -------------------------------------------------

def entrypoint_args(entrypoint: str):
    """`mqt JOB ...` parsed by the CLI's own parser; --config mapped from the image's project
    folder to this checkout."""
    words = shlex.split(entrypoint)
    assert words[:1] == ["mqt"], f"{entrypoint!r} does not start with mqt"
    assert len(words) > 1 and words[1] in JOBS, f"{entrypoint!r}: not an mqt job ({list(JOBS)})"
    args = parser().parse_args(words[1:])
    if args.config:
        inside = project_dir().rstrip("/") + "/"
        assert args.config.startswith(inside), f"--config {args.config} is not in {inside}"
        args.config = str(ROOT / args.config[len(inside):])
    return args


def offline(monkeypatch) -> None:
    """The jobs' checks without the network: an s3:// source is taken as what its name says
    (no listing, one row) and an s3:// output as empty, local paths are checked for real; no
    RAY_ADDRESS (in a RayJob, the job's own cluster) to reach."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    real_open, real_output = pipeline.annotate.open_source, pipeline.annotate._check_output

    def open_source(uri, storage=None, columns=None):
        loc = locate(uri, storage)
        if loc.is_local:
            return real_open(uri, storage, columns)
        kind = MANIFEST_SUFFIXES.get(posixpath.splitext(loc.path)[1].lower(), "folder")
        return Source(kind, loc, 1, ("image.png",) if kind == "folder" else ())

    def check_output(cfg):
        if locate(cfg.output, cfg.storage).is_local:
            real_output(cfg)

    monkeypatch.setattr(pipeline.annotate, "open_source", open_source)
    monkeypatch.setattr(pipeline.annotate, "_check_output", check_output)


def resolved(entrypoint: str, monkeypatch):
    """(job, config) of an entrypoint, with the job's own validation."""
    offline(monkeypatch)
    args = entrypoint_args(entrypoint)
    return args.job, resolve(args.job, args.config, args.overrides, args.preset)[1]


def gpu_demand(job: str, cfg) -> tuple[int, float, float]:
    """(units, CPUs per unit, GPUs per unit) a job asks Ray for: engine actors, train workers."""
    if job == "annotate":
        return cfg.actors, cfg.cpus_per_actor, cfg.gpus_per_actor
    if job == "train":
        if cfg.backend == "local":
            return 1, 0.0, 0.0
        return cfg.scaling.workers, cfg.scaling.cpus_per_worker, float(cfg.scaling.use_gpu)
    raise AssertionError(f"no rule for the resources of mqt {job}: add one here")


def assert_fits(spec: dict, units: int, cpus: float, gpus: float, what: str) -> None:
    """`units` of (cpus, gpus) fit the cluster's GPU workers at their largest, one unit per
    pod at least; a job that asks for no GPU has a cluster without GPU workers."""
    groups = gpu_groups(spec)
    if not gpus:
        assert not groups, f"{what} asks for no GPU on a cluster of GPU workers"
        return
    assert groups, f"{what} asks for {gpus} GPU per unit; the cluster has no GPU workers"
    assert units * gpus <= gpu_capacity(spec), (
        f"{what}: {units} x {gpus} GPUs, the GPU workers hold {gpu_capacity(spec)} at most")
    assert any(pod_resource(g, GPU) >= gpus and pod_resource(g, "cpu") >= cpus
               for g in groups), f"{what}: no GPU pod holds one unit ({cpus} CPU, {gpus} GPU)"


# --- the tests -----------------------------------------------------------------------------

RAYJOBS = ray_resources("RayJob")


def test_every_yaml_file_under_cluster_parses_into_mappings():
    files = sorted(CLUSTER.rglob("*.yaml")) + sorted(CLUSTER.rglob("*.yml"))
    names = {str(p.relative_to(CLUSTER)) for p in files}
    assert {"ray-cluster.yaml", "serve/mqt-smol.yaml", "kuberay/ray-cluster.yaml",
            "kuberay/rayjob-annotate.yaml", "kuberay/rayjob-train.yaml",
            "kuberay/rayservice.yaml"} <= names
    for path in files:
        docs = documents(path)
        assert docs and all(isinstance(d, dict) for d in docs), path


@pytest.mark.parametrize("path", kuberay_files(), ids=lambda p: p.name)
def test_every_kuberay_manifest_uses_kuberays_fields_and_the_ray_pin(path):
    docs = documents(path)
    ray_docs = [d for d in docs if d.get("apiVersion") == "ray.io/v1"]
    assert len(ray_docs) == 1, f"{path.name}: one ray.io/v1 resource per file"
    others = [(d.get("apiVersion"), d.get("kind")) for d in docs if d not in ray_docs]
    assert set(others) <= OTHER_KINDS, f"{path.name}: unexpected {others}"
    doc = ray_docs[0]
    assert doc["kind"] in RAY_KINDS and doc["metadata"]["name"]
    assert set(doc["spec"]) <= SPEC_FIELDS[doc["kind"]], set(doc["spec"]) - SPEC_FIELDS[doc["kind"]]
    spec = cluster_spec(doc)
    assert set(spec) <= SPEC_FIELDS["RayCluster"], set(spec) - SPEC_FIELDS["RayCluster"]
    assert spec["rayVersion"] == RAY_PIN
    assert spec.get("enableInTreeAutoscaling") is True
    head = spec["headGroupSpec"]
    assert set(head) <= HEAD_FIELDS and containers(head)
    assert pod_resource(head, GPU) == 0, "the head runs no GPU work"
    assert spec["workerGroupSpecs"], "a worker group"
    for group in spec["workerGroupSpecs"]:
        assert set(group) <= WORKER_FIELDS, set(group) - WORKER_FIELDS
        assert group["groupName"] and containers(group)
        replicas = group.get("replicas", group["minReplicas"])
        assert 0 <= group["minReplicas"] <= replicas <= group["maxReplicas"], group["groupName"]
    claims = {d["metadata"]["name"] for d in docs if d.get("kind") == "PersistentVolumeClaim"}
    used = {v["persistentVolumeClaim"]["claimName"]
            for g in [head, *spec["workerGroupSpecs"]]
            for v in g["template"]["spec"].get("volumes", []) if "persistentVolumeClaim" in v}
    assert used <= claims, f"{path.name}: volume claims {used - claims} are not in the file"


@pytest.mark.parametrize("path,job", RAYJOBS, ids=[p.name for p, _ in RAYJOBS])
def test_every_rayjob_entrypoint_resolves_as_mqt_resolves_it(path, job, monkeypatch):
    spec = job["spec"]
    assert spec["submissionMode"] == "K8sJobMode" and spec["shutdownAfterJobFinishes"] is True
    resolved(spec["entrypoint"], monkeypatch)  # a bad field or value raises, naming it
    from ray.runtime_env import RuntimeEnv

    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    RuntimeEnv(**runtime_env)  # Ray's own check: env_vars must be strings, known fields
    assert runtime_env["env_vars"]


@pytest.mark.parametrize("path,job", RAYJOBS, ids=[p.name for p, _ in RAYJOBS])
def test_a_misspelt_key_in_any_rayjob_entrypoint_fails_to_resolve(path, job):
    """What the test above rests on: resolution names an unknown field rather than ignoring
    it, for every key the entrypoint sets."""
    args = entrypoint_args(job["spec"]["entrypoint"])
    load(args.job, args.config, args.overrides, args.preset)  # as it is, it loads
    assert args.overrides
    for i, override in enumerate(args.overrides):
        key, value = override.split("=", 1)
        bad = [*args.overrides[:i], f"{key}_x={value}", *args.overrides[i + 1:]]
        with pytest.raises(ConfigError, match=re.escape(f"{key}_x")):
            load(args.job, args.config, bad, args.preset)


@pytest.mark.parametrize("path,job", RAYJOBS, ids=[p.name for p, _ in RAYJOBS])
def test_the_gpus_each_rayjob_asks_for_fit_the_gpu_workers_of_its_cluster(path, job,
                                                                         monkeypatch):
    name, cfg = resolved(job["spec"]["entrypoint"], monkeypatch)
    units, cpus, gpus = gpu_demand(name, cfg)
    assert_fits(job["spec"]["rayClusterSpec"], units, cpus, gpus, f"{path.name} (mqt {name})")


def test_the_standalone_raycluster_holds_the_jobs_of_the_rayjobs():
    (_, cluster), = ray_resources("RayCluster")
    spec = cluster_spec(cluster)
    for path, job in RAYJOBS:
        theirs = job["spec"]["rayClusterSpec"]
        assert gpu_capacity(spec) >= gpu_capacity(theirs), path.name
        for group in gpu_groups(theirs):
            assert any(pod_resource(g, GPU) >= pod_resource(group, GPU)
                       and pod_resource(g, "cpu") >= pod_resource(group, "cpu")
                       for g in gpu_groups(spec)), path.name


def serve_config() -> dict:
    (_, service), = ray_resources("RayService")
    return yaml.safe_load(service["spec"]["serveConfigV2"])


def without_gpus(applications: list[dict]) -> list[dict]:
    """The applications with `num_gpus` taken out of every deployment's ray_actor_options:
    the one difference the RayService may have from cluster/serve/mqt-smol.yaml."""
    out = yaml.safe_load(yaml.safe_dump(applications))
    for app in out:
        for deployment in app.get("deployments", []):
            deployment.get("ray_actor_options", {}).pop("num_gpus", None)
    return out


def test_the_rayservice_serves_the_application_of_the_serve_config_file():
    ours = serve_config()
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(ours)  # what Serve checks when KubeRay deploys it
    shipped = yaml.safe_load(SERVE_CONFIG.read_text())["applications"]
    assert without_gpus(ours["applications"]) == shipped
    assert ours["http_options"]["host"] == "0.0.0.0", "the Service must reach the proxies"
    port = ours["http_options"]["port"]
    (_, service), = ray_resources("RayService")
    spec = cluster_spec(service)
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        served = [p["containerPort"] for c in containers(group) for p in c.get("ports", [])
                  if p.get("name") == "serve"]
        assert served == [port], f"{group.get('groupName', 'head')}: serve port {served}"


def test_the_rayservice_replicas_fit_its_gpu_workers():
    (_, service), = ray_resources("RayService")
    spec = cluster_spec(service)
    for app in serve_config()["applications"]:
        for deployment in app["deployments"]:
            options = deployment.get("ray_actor_options", {})
            scaling = deployment.get("autoscaling_config") or {}
            replicas = scaling.get("max_replicas", deployment.get("num_replicas", 1))
            assert_fits(spec, replicas, options.get("num_cpus", 1), options.get("num_gpus", 0),
                        f"deployment {deployment['name']}")


def test_every_image_is_the_project_image_at_the_project_version():
    pinned = image()
    assert pinned.rsplit(":", 1)[1] == VERSION
    for path in kuberay_files():
        found = {i for d in documents(path) for i in images(d)}
        assert found == {pinned}, f"{path.name}: {found}"
    launcher = yaml.safe_load(LAUNCHER.read_text())["docker"]
    assert {launcher.get("head_image", pinned), launcher.get("worker_image", pinned)} == {pinned}
    labels = " ".join(dockerfile_args("LABEL"))
    assert re.search(r'org\.opencontainers\.image\.version="([^"]+)"', labels)[1] == VERSION
    assert f"-t {pinned} " in DOCS.read_text(), "docs/cluster.md builds another tag"


def test_the_dockerfile_builds_on_the_ray_pin_and_installs_as_install_md_says():
    (base,) = dockerfile_args("FROM")
    m = re.fullmatch(r"rayproject/ray:(?P<ray>[\d.]+)-py3(?P<py>\d+)-(?P<platform>gpu|cu\d+)",
                     base)
    assert m, f"FROM {base}: a CUDA image of rayproject/ray"
    assert m["ray"] == RAY_PIN
    lowest = int(re.search(r">=\s*3\.(\d+)", PROJECT["requires-python"])[1])
    assert int(m["py"]) >= lowest
    for args in dockerfile_args("COPY"):
        sources = [w for w in args.split() if not w.startswith("--")][:-1]
        assert sources and all((ROOT / s).exists() for s in sources), f"COPY {args}"
    runs = " ".join(dockerfile_args("RUN"))
    # torch: the constraints file's pin, from a CUDA index; then the project without that
    # line (it keeps the image's torch), then the weight packages without dependencies
    assert re.search(r"""pip install [^&]*"\$\(grep '\^torch==' requirements/constraints\.txt\)"""
                     r""""[^&]*--index-url""", runs)
    free = re.search(r"grep -v '\^torch==' requirements/constraints\.txt > (\S+)", runs)
    assert free and re.search(rf"pip install [^&]*-c {re.escape(free[1])} -e '\.\[data\]'", runs)
    assert re.search(r"pip install [^&]*--no-deps [^&]*-r requirements/bundled\.txt", runs)
    assert "torch.version.cuda" in runs, "the build checks that torch is a CUDA build"


def test_the_launcher_config_passes_rays_own_validation_with_a_gpu_worker_type():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(LAUNCHER.read_text())
    assert {"cluster_name", "provider", "docker", "available_node_types", "head_node_type",
            "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"} <= set(
        config)
    # what `ray up` does first (prepare_config fills defaults in place: a copy of its own)
    validate_config(prepare_config(yaml.safe_load(LAUNCHER.read_text())))
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    gpu = [t for t in workers if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu and all(t["max_workers"] >= 1 and t["node_config"]["InstanceType"] for t in gpu)
    (_, cluster), = ray_resources("RayCluster")
    capacity = sum(t["max_workers"] * t["resources"]["GPU"] for t in gpu)
    assert capacity >= gpu_capacity(cluster_spec(cluster)), "the launcher runs the same jobs"
    checked = re.findall(r"m\.version\('mqt-ray'\)", " ".join(config["setup_commands"]))
    versions = re.findall(r"== '([^']+)'", " ".join(config["setup_commands"]))
    assert checked and versions == [VERSION]


def test_docs_name_every_cluster_file_and_only_files_that_exist():
    text = DOCS.read_text()
    files = [DOCKERFILE, LAUNCHER, *kuberay_files()]
    for path in files:
        assert str(path.relative_to(ROOT)) in text, f"docs/cluster.md does not name {path}"
    for named in set(re.findall(r"cluster/[\w./-]+\.(?:yaml|md)|cluster/Dockerfile", text)):
        assert (ROOT / named).exists(), f"docs/cluster.md names {named}, which is not there"
