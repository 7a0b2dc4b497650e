"""Offline checks of the Kubernetes manifests in k8s/, the Dockerfile and .dockerignore.

Nothing here needs a cluster, Docker or the network: the manifests are
validated against the Kubernetes JSON schemas that the `kubernetes-validate`
package ships, and cross-checked against .env.example and against each other.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.test_image import RUN_FLAGS_FILE, run_flags

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"
SECRET_TEMPLATE = K8S / "secret.example.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# Kubernetes versions the manifests must be valid for: an old supported one and
# a recent one (both ship inside kubernetes-validate, so no download happens).
KUBERNETES_VERSIONS = ("1.28.0", "1.33.0")

# RELAY_ names used in k8s/ or the Dockerfile that may be missing from
# .env.example. Keep this explicit and short: RELAY_SHUTDOWN_TIMEOUT (seconds,
# default 20) is being added to .env.example together with graceful shutdown
# (issue 6, item 4); once it is there this entry is harmless.
ALLOWED_EXTRA_RELAY_NAMES = frozenset({"RELAY_SHUTDOWN_TIMEOUT"})
DEFAULT_SHUTDOWN_TIMEOUT = 20

# Settings that are secrets: never in the ConfigMap, always in the Secret.
SECRET_NAMES = ("RELAY_JWT_SECRET", "RELAY_PUBLISH_KEYS")

RELAY_NAME = re.compile(r"\bRELAY_[A-Z0-9_]+\b")


# --------------------------------------------------------------------------
# helpers


def env_example_names() -> set[str]:
    names = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"\s*(RELAY_[A-Z0-9_]+)=", line)
        if m:
            names.add(m.group(1))
    return names


def manifest_files() -> list[Path]:
    """Every YAML file in k8s/ except kustomization.yaml."""
    files = sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml"))
    return [p for p in files if p != KUSTOMIZATION]


def load_docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def kustomization() -> dict:
    (doc,) = load_docs(KUSTOMIZATION)
    return doc


def applied_docs() -> list[dict]:
    """The documents `kubectl apply -k k8s/` sends (before kustomize's transforms)."""
    docs = []
    for name in kustomization()["resources"]:
        docs.extend(load_docs(K8S / name))
    return docs


def all_docs() -> list:
    """``pytest`` params (filename, index, document) for every document in k8s/."""
    out = []
    for path in manifest_files():
        for i, doc in enumerate(load_docs(path)):
            kind = doc.get("kind", "?") if isinstance(doc, dict) else "?"
            name = doc.get("metadata", {}).get("name", "?") if isinstance(doc, dict) else "?"
            out.append(pytest.param(path.name, i, doc, id=f"{path.name}:{kind}/{name}"))
    return out


def find(kind: str, name: str | None = None) -> dict:
    matches = [d for d in applied_docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def configmap_data() -> dict[str, str]:
    return find("ConfigMap", "progress-relay-config")["data"]


def relay_deployment() -> dict:
    return find("Deployment", "progress-relay")


def relay_container() -> dict:
    containers = relay_deployment()["spec"]["template"]["spec"]["containers"]
    (c,) = [c for c in containers if c["name"] == "relay"]
    return c


def resolve_container_port(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    (p,) = [p for p in container["ports"] if p.get("name") == port]
    return p["containerPort"]


def labels_match(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are checked here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def shutdown_timeout() -> int:
    return int(configmap_data().get("RELAY_SHUTDOWN_TIMEOUT", DEFAULT_SHUTDOWN_TIMEOUT))


def prestop_seconds(container: dict) -> int:
    pre = container.get("lifecycle", {}).get("preStop")
    if not pre:
        return 0
    if "sleep" in pre:
        return int(pre["sleep"]["seconds"])
    cmd = pre["exec"]["command"]
    assert cmd[0] == "sleep", f"preStop is expected to be a sleep, got {cmd}"
    return int(cmd[1])


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line:
            instr, _, args = line.partition(" ")
            out.append((instr.upper(), args.strip()))
    return out


# --------------------------------------------------------------------------
# parsing and schemas


def test_every_manifest_parses():
    """Every YAML file in k8s/ parses and each document names its apiVersion, kind and metadata.name."""
    assert manifest_files(), "k8s/ holds no manifest"
    for path in manifest_files():
        docs = load_docs(path)
        assert docs, f"{path.name} holds no document"
        for doc in docs:
            assert isinstance(doc, dict), path.name
            assert doc.get("apiVersion") and doc.get("kind"), path.name
            assert doc.get("metadata", {}).get("name"), path.name


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("filename,index,doc", all_docs())
def test_manifest_validates_against_kubernetes_schema(filename, index, doc, version):
    """Each manifest document validates strictly (no unknown fields) against the offline Kubernetes schema."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        pytest.fail(f"{filename}[{index}] {doc['kind']}: {path}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError as e:
        pytest.fail(f"{filename}[{index}]: {e.message}")


def test_schema_validation_rejects_a_broken_manifest():
    """The offline validator really checks: an unknown field and a wrong type in the Deployment are rejected."""
    bad = copy.deepcopy(relay_deployment())
    bad["spec"]["replicaz"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[-1], strict=True)
    bad = copy.deepcopy(relay_deployment())
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8765"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[-1], strict=True)


# --------------------------------------------------------------------------
# kustomization


def test_kustomization_lists_every_manifest_and_each_exists():
    """kustomization.yaml lists every manifest in k8s/ (except the Secret template) and each listed file exists."""
    k = kustomization()
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert k["kind"] == "Kustomization"
    listed = k["resources"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    for name in listed:
        assert (K8S / name).is_file(), f"kustomization.yaml lists missing file {name}"
    expected = {p.relative_to(K8S).as_posix() for p in manifest_files()} - {SECRET_TEMPLATE.name}
    assert set(listed) == expected


def test_secret_template_is_not_applied_and_holds_no_real_secret():
    """secret.example.yaml is a Secret template left out of kustomization.yaml.

    Its placeholders are values production would refuse.
    """
    assert SECRET_TEMPLATE.name not in kustomization()["resources"]
    (secret,) = load_docs(SECRET_TEMPLATE)
    assert secret["kind"] == "Secret"
    assert secret["metadata"]["name"] == "progress-relay-secrets"
    values = secret.get("stringData", {})
    assert "data" not in secret, "use readable stringData placeholders in the template"
    for name in SECRET_NAMES:
        assert name in values, f"the template should show {name}"
    for name, value in values.items():
        assert "CHANGE" in value, f"{name} in the template is not an obvious placeholder"
        # Under the 32-byte minimum: a copy applied unchanged cannot start in production.
        assert len(value.encode()) < 32, name


def test_deployment_reads_the_configmap_and_the_secret():
    """The relay container takes its environment from the ConfigMap then the Secret, so the Secret's keys win."""
    env_from = relay_container()["envFrom"]
    refs = [
        ("configMap", e["configMapRef"]["name"]) if "configMapRef" in e else ("secret", e["secretRef"]["name"])
        for e in env_from
    ]
    assert refs == [("configMap", "progress-relay-config"), ("secret", "progress-relay-secrets")]
    (secret,) = load_docs(SECRET_TEMPLATE)
    assert secret["metadata"]["name"] == "progress-relay-secrets"


def test_kubectl_kustomize_builds(tmp_path):
    """`kubectl kustomize k8s/` renders, and every rendered object is schema-valid (skipped when kubectl is absent)."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl not installed")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(rendered) == len(applied_docs())
    for doc in rendered:
        assert doc["metadata"].get("namespace", "progress-relay") == "progress-relay"
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)


# --------------------------------------------------------------------------
# configuration


def test_every_relay_variable_exists_in_env_example():
    """Every RELAY_ name in k8s/ and the Dockerfile is a setting of .env.example.

    Or an explicitly allowed pending one.
    """
    known = env_example_names()
    assert "RELAY_PORT" in known, ".env.example could not be read"
    used: dict[str, set[str]] = {}
    files = [p for p in K8S.rglob("*") if p.is_file()] + [DOCKERFILE]
    for path in files:
        for name in RELAY_NAME.findall(path.read_text()):
            used.setdefault(name, set()).add(path.name)
    unknown = {n: sorted(f) for n, f in used.items() if n not in known | ALLOWED_EXTRA_RELAY_NAMES}
    assert not unknown, f"RELAY_ names not in .env.example: {unknown}"


def test_configmap_holds_only_known_non_secret_settings():
    """The ConfigMap's keys are RELAY_ settings, none of them a secret, with production values for a pod."""
    data = configmap_data()
    known = env_example_names() | ALLOWED_EXTRA_RELAY_NAMES
    for key, value in data.items():
        assert key in known, f"ConfigMap key {key} is not a setting"
        assert isinstance(value, str), f"{key} must be a string in a ConfigMap"
    for name in (*SECRET_NAMES, "RELAY_JWT_PRIVATE_KEY"):
        assert name not in data, f"{name} is a secret and belongs in the Secret"
    assert data["RELAY_ENV"] == "production"
    assert data["RELAY_HOST"] == "0.0.0.0"
    assert data["RELAY_WORKERS"] == "1"


def production_environ(**secrets: str) -> dict[str, str]:
    env = dict(configmap_data())
    env.update(secrets)
    return env


def test_configuration_accepts_the_configmap_with_real_secrets():
    """The relay's own configuration loader accepts the ConfigMap plus well-formed secrets as a production setup."""
    from service.config import load_settings

    settings = load_settings(production_environ(RELAY_JWT_SECRET="j" * 48, RELAY_PUBLISH_KEYS="p" * 64), env_file=None)
    assert settings.production
    assert settings.host == "0.0.0.0"
    assert settings.port == int(configmap_data()["RELAY_PORT"])
    assert settings.broker_url == configmap_data()["RELAY_BROKER_URL"]


def test_configuration_refuses_the_secret_template_placeholders():
    """Applying secret.example.yaml unchanged cannot start a production relay: its placeholders are refused."""
    from service.config import ConfigError, load_settings

    (secret,) = load_docs(SECRET_TEMPLATE)
    with pytest.raises(ConfigError):
        load_settings(production_environ(**secret["stringData"]), env_file=None)


def test_broker_url_points_at_the_bundled_redis_service():
    """RELAY_BROKER_URL is redis://redis:6379/0 and the bundled Redis Service answers on that name and port."""
    assert configmap_data()["RELAY_BROKER_URL"] == "redis://redis:6379/0"
    svc = find("Service", "redis")
    assert [p["port"] for p in svc["spec"]["ports"]] == [6379]
    sts = find("StatefulSet", "redis")
    assert labels_match({"matchLabels": svc["spec"]["selector"]}, sts["spec"]["template"]["metadata"]["labels"])
    redis_container = sts["spec"]["template"]["spec"]["containers"][0]
    target = svc["spec"]["ports"][0]["targetPort"]
    assert resolve_container_port(redis_container, target) == 6379


# --------------------------------------------------------------------------
# deployment


def test_probes_use_health_paths_on_the_relay_port():
    """Liveness probes /healthz and readiness /readyz, both on the container port equal to RELAY_PORT."""
    port = int(configmap_data()["RELAY_PORT"])
    c = relay_container()
    assert [p["containerPort"] for p in c["ports"]] == [port]
    live = c["livenessProbe"]["httpGet"]
    ready = c["readinessProbe"]["httpGet"]
    assert live["path"] == "/healthz"
    assert ready["path"] == "/readyz"
    assert resolve_container_port(c, live["port"]) == port
    assert resolve_container_port(c, ready["port"]) == port
    # Draining must be noticed within a few seconds.
    assert c["readinessProbe"]["periodSeconds"] <= 10


def test_service_and_ingress_reach_the_relay_port():
    """The Service targets the relay's container port, and the Ingress backends use that Service port."""
    port = int(configmap_data()["RELAY_PORT"])
    c = relay_container()
    svc = find("Service", "progress-relay")
    (sp,) = svc["spec"]["ports"]
    assert resolve_container_port(c, sp["targetPort"]) == port
    for path in find("Ingress")["spec"]["rules"][0]["http"]["paths"]:
        backend = path["backend"]["service"]
        assert backend["name"] == "progress-relay"
        assert backend["port"].get("name") == sp["name"] or backend["port"].get("number") == sp["port"]


def test_termination_grace_period_exceeds_shutdown_timeout():
    """``terminationGracePeriodSeconds`` is above the preStop sleep plus RELAY_SHUTDOWN_TIMEOUT."""
    pod = relay_deployment()["spec"]["template"]["spec"]
    grace = pod["terminationGracePeriodSeconds"]
    pre = prestop_seconds(relay_container())
    assert 0 < pre <= 15, "a preStop sleep of a few seconds lets endpoints update first"
    assert grace > pre + shutdown_timeout()


def test_pods_run_non_root_with_a_read_only_root_filesystem():
    """Relay and Redis pods run as non-root, with a read-only root filesystem.

    No privilege escalation, all capabilities dropped, no API token.
    """
    for workload in (relay_deployment(), find("StatefulSet", "redis")):
        pod = workload["spec"]["template"]["spec"]
        name = workload["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False, name
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True, name
        assert psc["runAsUser"] != 0, name
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert sc.get("runAsUser", psc["runAsUser"]) != 0, name
    # The relay gets a writable /tmp on an emptyDir.
    pod = relay_deployment()["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in relay_container()["volumeMounts"]}
    assert "/tmp" in mounts
    (vol,) = [v for v in pod["volumes"] if v["name"] == mounts["/tmp"]]
    assert "emptyDir" in vol


def test_deployment_has_replicas_resources_and_a_safe_rollout():
    """Several replicas, CPU/memory requests and limits, and a rolling update that never drops below capacity."""
    spec = relay_deployment()["spec"]
    assert spec["replicas"] >= 2
    res = relay_container()["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(res[kind]), kind
    ru = spec["strategy"]["rollingUpdate"]
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert ru["maxUnavailable"] == 0 and ru["maxSurge"] >= 1
    assert relay_container()["image"] in {i["name"] for i in kustomization()["images"]}


def test_selectors_match_the_relay_pods():
    """Service, PDB, NetworkPolicy and HPA all select or target the relay Deployment's pods."""
    dep = relay_deployment()
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels_match(dep["spec"]["selector"], labels)
    assert labels_match({"matchLabels": find("Service", "progress-relay")["spec"]["selector"]}, labels)
    assert labels_match(find("PodDisruptionBudget")["spec"]["selector"], labels)
    assert labels_match(find("NetworkPolicy", "progress-relay")["spec"]["podSelector"], labels)
    target = find("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", dep["metadata"]["name"])


def test_hpa_scales_on_cpu_and_pdb_keeps_pods_up():
    """The HPA scales on CPU from at least the Deployment's replicas; the PDB lets at most one pod go at a time."""
    hpa = find("HorizontalPodAutoscaler")["spec"]
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]
    assert hpa["minReplicas"] == relay_deployment()["spec"]["replicas"]
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    pdb = find("PodDisruptionBudget")["spec"]
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable", 0) >= 1


# --------------------------------------------------------------------------
# ingress and network policy

PUBLIC_PREFIXES = ("/ws/", "/v1/")
NEVER_ROUTED = ("/internal", "/metrics", "/healthz", "/readyz", "/demo")


def test_ingress_routes_only_public_paths():
    """The Ingress routes /ws/executions and /v1/executions only: never /internal, /metrics, health or /demo."""
    ing = find("Ingress")["spec"]
    assert "defaultBackend" not in ing
    paths = []
    for rule in ing["rules"]:
        for p in rule["http"]["paths"]:
            assert p["pathType"] in ("Prefix", "Exact"), p
            paths.append(p["path"])
    assert set(paths) == {"/ws/executions", "/v1/executions"}
    for path in paths:
        assert path.startswith(PUBLIC_PREFIXES), path
        # A Prefix path matches on whole segments; none of these may be
        # reached by, or be a prefix of, a private path.
        for private in NEVER_ROUTED:
            assert not path.startswith(private) and not private.startswith(path), (path, private)
    annotations = find("Ingress")["metadata"].get("annotations", {})
    assert not any("snippet" in k or "rewrite-target" in k for k in annotations), (
        "no rewrites or snippets that could map a public path onto a private one"
    )


def test_ingress_is_ready_for_websockets_and_sse():
    """ingress-nginx keeps WebSocket and SSE connections for an hour and does not buffer SSE."""
    ing = find("Ingress")
    ann = ing["metadata"]["annotations"]
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(ann["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    assert ann["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"


def test_network_policy_admits_only_scheduler_ingress_controller_and_prometheus():
    """The relay's NetworkPolicy admits only the scheduler, ingress-nginx and Prometheus.

    The scheduler pods, the ingress-nginx namespace and Prometheus, on the relay port only.
    """
    np_ = find("NetworkPolicy", "progress-relay")["spec"]
    assert np_["policyTypes"] == ["Ingress"]
    c = relay_container()
    port = int(configmap_data()["RELAY_PORT"])
    peers = []
    for rule in np_["ingress"]:
        assert rule.get("from"), "a rule without 'from' would admit everyone"
        assert rule.get("ports"), "every rule is limited to the relay port"
        for p in rule["ports"]:
            assert resolve_container_port(c, p["port"]) == port
        for peer in rule["from"]:
            assert "ipBlock" not in peer
            # An empty selector would mean "every pod" or "every namespace".
            for sel in ("podSelector", "namespaceSelector"):
                if sel in peer:
                    assert peer[sel].get("matchLabels"), (sel, peer)
            peers.append(peer)
    scheduler = [
        p for p in peers if p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") == "scheduler"
    ]
    assert scheduler, "the scheduler pods must be admitted"
    namespaces = {
        p["namespaceSelector"]["matchLabels"].get("kubernetes.io/metadata.name")
        for p in peers
        if "namespaceSelector" in p and "podSelector" not in p
    }
    assert namespaces == {"ingress-nginx", "monitoring"}


def test_redis_is_reachable_only_from_relay_pods():
    """The bundled Redis admits connections only from the relay pods."""
    np_ = find("NetworkPolicy", "redis")["spec"]
    sts = find("StatefulSet", "redis")
    assert labels_match(np_["podSelector"], sts["spec"]["template"]["metadata"]["labels"])
    relay_labels = relay_deployment()["spec"]["template"]["metadata"]["labels"]
    (rule,) = np_["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}
    assert labels_match(peer["podSelector"], relay_labels)


# --------------------------------------------------------------------------
# container image


def test_dockerfile_uses_slim_python_311_and_a_non_root_user():
    """The Dockerfile builds on BASE_IMAGE, python:3.11-slim by default, and switches to a non-root USER."""
    instr = dockerfile_instructions()
    froms = [a for i, a in instr if i == "FROM"]
    assert froms == ["${BASE_IMAGE}"], "the base image is the build argument BASE_IMAGE"
    args = dict(a.partition("=")[::2] for i, a in instr if i == "ARG")
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim", args.get("BASE_IMAGE", "")), args
    assert instr[0][0] == "ARG", "BASE_IMAGE is declared before the first FROM"
    users = [a for i, a in instr if i == "USER"]
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # Numeric, so Kubernetes can verify runAsNonRoot, and equal to the pod's uid.
    assert user.isdigit()
    assert int(user) == relay_deployment()["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    last_user = max(n for n, (i, _) in enumerate(instr) if i == "USER")
    last_run = max(n for n, (i, _) in enumerate(instr) if i == "RUN")
    assert last_user > last_run, "USER must come after the last RUN that needs root"


def test_dockerfile_installs_the_project_from_pyproject_without_test_extras():
    """The image installs the project itself from pyproject.toml (`pip install .`), with no dev/test extras."""
    instr = dockerfile_instructions()
    copies = " ".join(a for i, a in instr if i == "COPY")
    assert "pyproject.toml" in copies
    for pkg in ("service", "auth"):
        assert re.search(rf"\b{pkg}/?\s", copies + " "), f"{pkg}/ is not copied"
    runs = [a for i, a in instr if i == "RUN"]
    assert any(re.search(r"pip install\b[^&|;]*\s\.(\s|$)", r) for r in runs), runs
    assert not any(re.search(r"requirements|\[(test|dev)\]|-e\s", r) for r in runs), runs


def test_dockerfile_exposes_the_port_and_serves():
    """The image exposes RELAY_PORT, listens on 0.0.0.0 and runs `progress-relay serve`."""
    instr = dockerfile_instructions()
    port = configmap_data()["RELAY_PORT"]
    assert [a for i, a in instr if i == "EXPOSE"] == [port]
    env = " ".join(a for i, a in instr if i == "ENV")
    assert re.search(r"\bRELAY_HOST=0\.0\.0\.0\b", env)
    (cmd,) = [a for i, a in instr if i == "CMD"]
    assert cmd == '["progress-relay", "serve"]'
    assert not [a for i, a in instr if i == "ENTRYPOINT"]


def test_dockerignore_excludes_local_state_but_not_the_sources():
    """.dockerignore keeps local state out of the build context, but not the sources.

    Local state: .venv, .git, caches, node_modules, bench/results and .env.
    """
    entries = {ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")}
    for needed in (".venv", ".git", ".pytest_cache", "node_modules", "bench/results", ".env"):
        assert needed in entries, needed
    for kept in ("pyproject.toml", "README.md", "service", "auth", "service/", "auth/", "*"):
        assert kept not in entries, kept


def test_dockerfile_assumes_nothing_only_one_base_has():
    """Only `python3` and `python3 -m pip`: both python:3.11-slim and the Debian base CI builds on have them.

    A bare `python`, a bare `pip` or a /usr/local path exists in the registry image only.
    """
    instr = dockerfile_instructions()
    commands = [a for i, a in instr if i in ("RUN", "CMD", "HEALTHCHECK", "ENTRYPOINT")]
    assert any("python3 -m pip install" in c for c in commands)
    for command in commands:
        words = re.findall(r"[\w./-]+", command)
        assert "python" not in words, command
        bare_pip = re.search(r"(^|[\s;&|\"])pip3?\s", command.replace("python3 -m pip", ""))
        assert not bare_pip, f"call pip as `python3 -m pip`: {command}"
        assert "/usr/local" not in command, command


def test_dockerfile_copies_whole_packages_not_single_modules():
    """COPY names directories (service/, auth/), never a module: files may move inside the packages."""
    copies = [a for i, a in dockerfile_instructions() if i == "COPY"]
    for copy_args in copies:
        assert not re.search(r"\.py\b", copy_args), copy_args


def parse_run_flags(flags: list[str]) -> dict:
    """The security-relevant parts of `podman run` flags written as --name=value (or a bare --name)."""
    out: dict = {"read_only": False, "tmpfs": {}, "cap_drop": [], "cap_add": [], "security_opt": [], "user": None}
    for flag in flags:
        name, _, value = flag.partition("=")
        if name == "--read-only":
            out["read_only"] = value in ("", "true")
        elif name == "--tmpfs":
            path, _, options = value.partition(":")
            out["tmpfs"][path] = dict(o.partition("=")[::2] for o in options.split(",") if o)
        elif name == "--cap-drop":
            out["cap_drop"].append(value)
        elif name == "--cap-add":
            out["cap_add"].append(value)
        elif name == "--security-opt":
            out["security_opt"].append(value)
        elif name == "--user":
            out["user"] = value
        else:
            out.setdefault("other", []).append(flag)
    return out


def mebibytes(size: str) -> float:
    """A Kubernetes quantity (64Mi) or a tmpfs size (64m) in MiB."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|k|m|g)?", size)
    assert m, size
    factor = {"Ki": 1 / 1024, "k": 1 / 1024, "Mi": 1, "m": 1, "Gi": 1024, "g": 1024, None: 1 / 1024**2}
    return int(m.group(1)) * factor[m.group(2)]


def security_mismatches(flags: list[str], pod: dict, container: dict) -> list[str]:
    """Where `podman run` flags and the pod's security context disagree (empty when they match)."""
    f = parse_run_flags(flags)
    sc, psc = container["securityContext"], pod["securityContext"]
    wrong = []
    if f.get("other"):
        wrong.append(f"flags not part of a security context: {f['other']}")
    if f["read_only"] != sc.get("readOnlyRootFilesystem", False):
        wrong.append("--read-only vs readOnlyRootFilesystem")
    caps = sc.get("capabilities", {})
    if f["cap_drop"] != caps.get("drop", []) or f["cap_add"] != caps.get("add", []):
        wrong.append("--cap-drop/--cap-add vs capabilities")
    no_new_privs = {"no-new-privileges", "no-new-privileges=true", "no-new-privileges:true"} & set(f["security_opt"])
    if bool(no_new_privs) != (sc.get("allowPrivilegeEscalation") is False):
        wrong.append("no-new-privileges vs allowPrivilegeEscalation")
    if any(o.startswith(("seccomp=", "seccomp:", "apparmor=unconfined", "label=disable")) for o in f["security_opt"]):
        wrong.append("the engine's default profiles must stay (seccompProfile: RuntimeDefault)")
    user = sc.get("runAsUser", psc.get("runAsUser"))
    group = sc.get("runAsGroup", psc.get("runAsGroup"))
    if f["user"] != f"{user}:{group}":
        wrong.append(f"--user={f['user']} vs runAsUser:runAsGroup {user}:{group}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}
    if set(f["tmpfs"]) != set(mounts):
        wrong.append(f"--tmpfs {sorted(f['tmpfs'])} vs volumeMounts {sorted(mounts)}")
    for path, volume in mounts.items():
        limit = volume.get("emptyDir", {}).get("sizeLimit")
        size = f["tmpfs"].get(path, {}).get("size")
        if limit is None or size is None or mebibytes(limit) != mebibytes(size):
            wrong.append(f"--tmpfs {path} size={size} vs emptyDir sizeLimit {limit}")
    return wrong


def test_the_image_smoke_test_runs_with_the_deployments_security_context():
    """scripts/image-run-flags, which tests/test_image.py runs the image with, is the relay container's securityContext.

    Read-only root, tmpfs /tmp of the emptyDir's size, all capabilities dropped, no privilege
    escalation, the default seccomp profile, uid and gid 10001 (the Dockerfile's USER too).
    """
    pod = relay_deployment()["spec"]["template"]["spec"]
    flags = run_flags()
    assert flags, f"{RUN_FLAGS_FILE} holds no flag"
    assert security_mismatches(flags, pod, relay_container()) == []
    users = [a for i, a in dockerfile_instructions() if i == "USER"]
    assert parse_run_flags(flags)["user"] == users[-1]


@pytest.mark.parametrize(
    "change",
    [
        lambda flags: [f for f in flags if f != "--read-only"],
        lambda flags: [f for f in flags if not f.startswith("--cap-drop")],
        lambda flags: [*flags, "--cap-add=NET_BIND_SERVICE"],
        lambda flags: [f for f in flags if not f.startswith("--security-opt")],
        lambda flags: [*flags, "--security-opt=seccomp=unconfined"],
        lambda flags: [f.replace("10001:10001", "0:0") for f in flags],
        lambda flags: [f.replace("size=64m", "size=1g") for f in flags],
        lambda flags: [f for f in flags if not f.startswith("--tmpfs")],
        lambda flags: [*flags, "--privileged"],
    ],
    ids=[
        "writable-root",
        "caps-kept",
        "cap-added",
        "escalation",
        "seccomp-off",
        "root",
        "tmp-size",
        "no-tmp",
        "privileged",
    ],
)
def test_the_security_context_comparison_notices_a_difference(change):
    """Each way the smoke test's flags could drift from k8s/ is reported."""
    pod = relay_deployment()["spec"]["template"]["spec"]
    assert security_mismatches(change(run_flags()), pod, relay_container())
