"""The Helm chart (helm/aisle): lint, render, Kubernetes schemas and what the manifests say.

helm comes from the PyPI wheel tools/fetch_helm.py unpacks; these tests skip only when that
download is impossible. Value sets: the chart's defaults plus helm/aisle/ci/*.yaml (good) and
tests/helm/values/bad-*.yaml (each must be rejected).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "aisle"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
BAD_VALUES = Path(__file__).resolve().parent / "values"
VALUE_SETS = {"default": None, **{p.stem.removesuffix("-values"): p for p in CI_VALUES}}
RELEASE = "shop"
NAMESPACE = "aisle-test"
POD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
# Kinds from CRDs: kubernetes-validate has no schema for them (checked by tests here instead).
CRD_GROUPS = ("monitoring.coreos.com/",)


# --- helpers ------------------------------------------------------------------------------------

def _load_fetch_helm():
    spec = importlib.util.spec_from_file_location("fetch_helm", REPO / "tools" / "fetch_helm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kubernetes_validate() -> list[str]:
    """The kubernetes-validate CLI of this interpreter's environment."""
    beside = Path(sys.executable).parent / "kubernetes-validate"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "kubernetes_validate"]


def run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def deep_merge(base: dict, override: dict) -> dict:
    """Helm's values merge: maps merge key by key, a null deletes, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def values_of(name: str) -> dict:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    path = VALUE_SETS[name]
    return deep_merge(defaults, yaml.safe_load(path.read_text()) if path else {})


def kube_range() -> tuple[str, str]:
    """Oldest and newest Kubernetes minor the chart claims, from Chart.yaml kubeVersion."""
    constraint = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    low = re.search(r">=\s*1\.(\d+)", constraint)
    high = re.search(r"<\s*1\.(\d+)\.0", constraint)
    assert low and high, f"kubeVersion {constraint!r} must be a bounded range >=1.X.0-0 <1.Y.0-0"
    return f"1.{low.group(1)}", f"1.{int(high.group(1)) - 1}"


OLDEST, NEWEST = kube_range()


class Manifests:
    """The documents one `helm template` rendered, with look-ups the tests share."""

    def __init__(self, text: str):
        self.text = text
        self.docs = [d for d in yaml.safe_load_all(text) if d]

    def of(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict:
        found = [d for d in self.of(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}: {[d['metadata']['name'] for d in self.of(kind)]}"
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        return any(d["metadata"]["name"] == name for d in self.of(kind))

    def pod_templates(self) -> list[tuple[dict, dict]]:
        """(workload, pod template) of every workload."""
        out = []
        for doc in self.docs:
            if doc["kind"] == "CronJob":
                out.append((doc, doc["spec"]["jobTemplate"]["spec"]["template"]))
            elif doc["kind"] in POD_KINDS:
                out.append((doc, doc["spec"]["template"]))
        return out

    def component(self, component: str) -> dict:
        """The one workload whose pods carry app.kubernetes.io/component=component."""
        found = [w for w, t in self.pod_templates() if t["metadata"]["labels"].get("app.kubernetes.io/component") == component]
        assert len(found) == 1, f"expected one workload for component {component}, found {len(found)}"
        return found[0]

    def pod_of(self, workload: dict) -> dict:
        if workload["kind"] == "CronJob":
            return workload["spec"]["jobTemplate"]["spec"]["template"]
        return workload["spec"]["template"]


def container(pod_template: dict, name: str) -> dict:
    found = [c for c in pod_template["spec"]["containers"] if c["name"] == name]
    assert len(found) == 1, f"no container {name}"
    return found[0]


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def port_named(c: dict, name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    assert name in ports, f"container {c['name']} has no port named {name}: {ports}"
    return ports[name]


def resolve_port(c: dict, port) -> int:
    return port if isinstance(port, int) else port_named(c, port)


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def enabled_components(values: dict, *names: str) -> list[str]:
    """Those of ``names`` the values enable (beat and refresh can be off), then every enabled
    worker deployment."""
    on = {"beat": values["beat"].get("enabled", True), "refresh": values["refresh"]["enabled"]}
    return [n for n in names if on.get(n, True)] + [
        f"worker-{w}" for w, d in values["workers"]["deployments"].items() if d.get("enabled", True)]


def addressed_service(manifests, component: str, var: str) -> tuple[dict, dict]:
    """The Service that ``component``'s host:port variable ``var`` names, and that port's entry
    in it."""
    pod = manifests.pod_of(manifests.component(component))
    host, port = env_of(pod["spec"]["containers"][0])[var]["value"].rsplit(":", 1)
    service = manifests.get("Service", host)
    [sp] = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
    return service, sp


def flag(args: list[str], name: str) -> str:
    """Value of `--name=value` or `--name value` in an argument list."""
    for i, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name:
            return args[i + 1]
    raise AssertionError(f"{name} not in {args}")


QUANTITY = re.compile(r"^([0-9.]+)(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
SCALE = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value) -> float:
    match = QUANTITY.match(str(value))
    assert match, f"not a quantity: {value!r}"
    return float(match.group(1)) * SCALE[match.group(2)]


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def helm() -> Path:
    fetch = _load_fetch_helm()
    try:
        return fetch.ensure_helm()
    except fetch.HelmUnavailable as exc:
        pytest.skip(f"helm unavailable (tools/fetch_helm.py): {exc}")


def template(helm: Path, values: Path | None, kube: str, *extra: str, chart: Path = CHART) -> subprocess.CompletedProcess:
    cmd = [helm, "template", RELEASE, chart, "--namespace", NAMESPACE, "--kube-version", f"{kube}.0"]
    if values:
        cmd += ["-f", values]
    return run(cmd + list(extra), check=False)


@pytest.fixture(scope="module")
def rendered(helm) -> dict[tuple[str, str], Manifests]:
    """Every value set rendered at the oldest and newest Kubernetes version the chart claims."""
    out = {}
    for name, path in VALUE_SETS.items():
        for kube in (OLDEST, NEWEST):
            done = template(helm, path, kube)
            assert done.returncode == 0, f"helm template ({name}, {kube}) failed:\n{done.stderr}"
            out[name, kube] = Manifests(done.stdout)
    return out


@pytest.fixture(params=sorted(VALUE_SETS))
def case(request, rendered) -> tuple[str, Manifests, dict]:
    """(value set name, its manifests at the newest version, its merged values)."""
    return request.param, rendered[request.param, NEWEST], values_of(request.param)


# --- chart metadata, lint and Kubernetes schemas ------------------------------------------------

def test_value_sets_cover_the_required_variants():
    # Given the chart's CI value sets, merged over the defaults
    sets = {name: values_of(name) for name in VALUE_SETS}
    # Then there are at least three besides the defaults, and together they switch GPU on and
    # off, use a PVC and object storage, and turn API keys on
    assert len(sets) >= 4
    assert {v["triton"]["gpu"]["enabled"] for v in sets.values()} == {True, False}
    sources = {v["triton"]["modelRepository"]["source"] for v in sets.values()}
    assert {"pvc", "objectStorage", "image"} <= sources
    assert any(v["apiKeys"]["enabled"] for v in sets.values())


def test_supported_kubernetes_versions_are_known_to_kubernetes_validate():
    # Given the range Chart.yaml claims
    from kubernetes_validate import utils

    known = {utils.major_minor(v) for v in utils.all_versions()}
    # Then kubernetes-validate has schemas for its oldest and newest minor (not a fallback)
    assert OLDEST in known and NEWEST in known, f"claimed {OLDEST}..{NEWEST}, kubernetes-validate knows {sorted(known)}"
    # And the README states the same range
    readme = (CHART / "README.md").read_text()
    assert f"{OLDEST} to {NEWEST}" in readme


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_strict(helm, name):
    # Given a value set
    cmd = [helm, "lint", "--strict", CHART, "--kube-version", f"{NEWEST}.0"]
    if VALUE_SETS[name]:
        cmd += ["-f", VALUE_SETS[name]]
    # When helm lints the chart with it, warnings counting as failures
    done = run(cmd, check=False)
    # Then it passes
    assert done.returncode == 0 and "0 chart(s) failed" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("kube", sorted({OLDEST, NEWEST}))
def test_kubernetes_validate_strict(rendered, tmp_path, kube):
    # Given every value set rendered for this Kubernetes version
    files = []
    expected = 0
    for name in sorted(VALUE_SETS):
        manifests = rendered[name, kube]
        path = tmp_path / f"{name}.yaml"
        path.write_text(manifests.text)
        files.append(path)
        expected += sum(not d["apiVersion"].startswith(CRD_GROUPS) for d in manifests.docs)
    # When kubernetes-validate checks them strictly (unknown fields are errors)
    done = run([*kubernetes_validate(), "--strict", "-k", f"{kube}.0", *files], check=False)
    out = done.stdout + done.stderr
    # Then every resource passes, and the only schema-less kinds are the CRD ones
    assert done.returncode == 0, out
    unknown = [line for line in out.splitlines() if line.startswith("WARN") and "monitoring.coreos.com" not in line]
    assert not unknown, "\n".join(unknown)
    passed = len(re.findall(rf"^INFO .* passed for resource .* against version {re.escape(kube)}$", out, re.M))
    assert passed == expected, out


def test_kubernetes_validate_rejects_an_unknown_field(rendered, tmp_path):
    # Given the default manifests with a misspelt field in the gateway's container
    manifests = rendered["default", NEWEST]
    docs = copy.deepcopy(manifests.docs)
    gateway = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-gateway"))
    gateway["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"tcpSocket": {"port": 1}}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    # When kubernetes-validate checks it strictly
    done = run([*kubernetes_validate(), "--strict", "-k", f"{NEWEST}.0", path], check=False)
    # Then it fails on that field (the validation above can fail)
    assert done.returncode != 0 and "readinesProbe" in done.stdout + done.stderr


def test_helm_refuses_a_kubernetes_version_outside_the_range(helm):
    # Given a cluster one minor newer than the newest claimed
    minor = int(NEWEST.split(".")[1]) + 1
    # When the chart is rendered for it
    done = template(helm, None, f"1.{minor}")
    # Then helm refuses with the chart's kubeVersion
    assert done.returncode != 0 and "kubeVersion" in done.stderr, done.stderr


# --- values schema ------------------------------------------------------------------------------

BAD = [
    ("bad-type.yaml", "gateway.replicas: Invalid type. Expected: integer, given: string"),
    ("bad-unknown-top-level-key.yaml", "(root): Additional property gatway is not allowed"),
    ("bad-unknown-nested-key.yaml", "triton.gpu: Additional property enable is not allowed"),
    ("bad-enum.yaml", 'triton.modelRepository.source must be one of the following: "image", "pvc", "objectStorage"'),
    ("bad-missing-limits.yaml", "gateway.resources: limits is required"),
    ("bad-postgres-url.yaml", "postgres.url: Does not match pattern"),
]


def test_every_bad_value_set_is_listed():
    # Given the bad value sets on disk, Then each has an expected message below
    assert sorted(p.name for p in BAD_VALUES.glob("bad-*.yaml")) == sorted(name for name, _ in BAD)


@pytest.mark.parametrize("name,message", BAD, ids=[n for n, _ in BAD])
def test_schema_rejects_bad_values(helm, name, message):
    # Given a value set with a wrong type, an unknown key or a bad value
    # When it is rendered
    done = template(helm, BAD_VALUES / name, NEWEST)
    # Then helm refuses it with the schema's message naming the key
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr
    assert message in done.stderr, done.stderr


@pytest.mark.parametrize(
    "sets,message",
    [
        (["triton.modelRepository.source=pvc"], "set triton.modelRepository.pvc.claimName"),
        (["triton.modelRepository.source=objectStorage"], "set triton.modelRepository.objectStorage.remote"),
        (["apiKeys.enabled=true"], "set apiKeys.existingSecret.name or at least one key in apiKeys.keys"),
        (["postgres.url="], "set postgres.url or postgres.existingSecret.name"),
    ],
)
def test_incomplete_values_fail_with_what_to_set(helm, sets, message):
    # Given values that pick a source or feature without what it needs
    extra = [a for s in sets for a in ("--set", s)]
    # When rendered
    done = template(helm, None, NEWEST, *extra)
    # Then the chart fails naming the value to set
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_schema_and_values_have_the_same_top_level_keys():
    # Given values.yaml and values.schema.json
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    # Then the schema describes exactly the keys values.yaml has, and rejects others
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(values)


# Maps whose entries are Kubernetes fields or free-form labels, documented by their parent key.
FREE_FORM = {"resources", "initResources", "podSecurityContext", "securityContext", "labels", "annotations", "nodeSelector"}


def test_every_value_is_documented():
    # Given values.yaml
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for i, line in enumerate(lines):
        match = re.match(r"^( *)(- )?([A-Za-z_][\w.-]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parents = [k for _, k in stack]
        stack.append((indent, "[]" if match.group(2) else match.group(3)))
        # (entries of lists and of free-form maps are documented by the key that holds them)
        if match.group(2) or "[]" in parents or FREE_FORM & set(parents):
            continue
        # Then every key has a comment on the line above it
        if not lines[i - 1].lstrip().startswith("#"):
            undocumented.append(".".join(parents + [match.group(3)]))
    assert not undocumented, f"values.yaml keys without a comment: {undocumented}"


# --- security defaults --------------------------------------------------------------------------

def test_every_container_has_requests_limits_and_a_locked_down_security_context(case):
    name, manifests, _ = case
    checked = 0
    for workload, pod in manifests.pod_templates():
        spec = pod["spec"]
        where = f"{name}: {workload['kind']} {workload['metadata']['name']}"
        # Then no pod mounts a ServiceAccount token and every pod uses the runtime's seccomp profile
        assert spec.get("automountServiceAccountToken") is False, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        for c in spec.get("initContainers", []) + spec["containers"]:
            at = f"{where} container {c['name']}"
            # And every container has cpu and memory requests and limits, limits >= requests
            res = c.get("resources", {})
            for resource in ("cpu", "memory"):
                request = res.get("requests", {}).get(resource)
                limit = res.get("limits", {}).get(resource)
                assert request is not None and limit is not None, f"{at}: no {resource} request/limit"
                assert quantity(limit) >= quantity(request), f"{at}: {resource} limit below request"
            # And runs as non-root, read-only root filesystem, no privilege escalation, no capabilities
            sc = c.get("securityContext", {})
            assert sc.get("runAsNonRoot", spec["securityContext"].get("runAsNonRoot")) is True, at
            assert sc.get("runAsUser", spec["securityContext"].get("runAsUser")) not in (0, None), at
            assert sc.get("readOnlyRootFilesystem") is True, at
            assert sc.get("allowPrivilegeEscalation") is False, at
            assert sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc["capabilities"].get("add"), at
            assert not sc.get("privileged"), at
            # And has a writable /tmp, the only place the app (and Triton) writes
            assert "/tmp" in {m["mountPath"] for m in c.get("volumeMounts", [])}, at
            checked += 1
    assert checked >= 6


def test_service_accounts_do_not_automount_tokens(case):
    name, manifests, values = case
    # Then every ServiceAccount the chart creates disables token automount
    for sa in manifests.of("ServiceAccount"):
        assert sa.get("automountServiceAccountToken") is False, sa["metadata"]["name"]
    # And pods run as the chart's account, or the named existing one when create is false
    gateway = manifests.pod_of(manifests.component("gateway"))
    if values["serviceAccount"]["create"]:
        assert manifests.has("ServiceAccount", gateway["spec"]["serviceAccountName"])
    else:
        assert gateway["spec"]["serviceAccountName"] == values["serviceAccount"]["name"]
        assert not manifests.of("ServiceAccount") or all(
            "helm.sh/hook" in sa["metadata"].get("annotations", {}) for sa in manifests.of("ServiceAccount")
        )


def test_network_policy_lets_only_the_gateway_workers_and_refresh_reach_triton(rendered):
    # Given the default manifests
    manifests = rendered["default", NEWEST]
    [policy] = manifests.of("NetworkPolicy")
    triton_pod = manifests.pod_of(manifests.component("triton"))
    triton = container(triton_pod, "triton")
    # Then it applies to the Triton pods and only to them
    assert selects(policy["spec"]["podSelector"]["matchLabels"], triton_pod["metadata"]["labels"])
    for workload, pod in manifests.pod_templates():
        if workload is not manifests.component("triton"):
            assert not selects(policy["spec"]["podSelector"]["matchLabels"], pod["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    # And the inference ports admit exactly the gateway's, the workers' and the refresh job's pods
    inference = {port_named(triton, "http"), port_named(triton, "grpc")}
    admitted = set()
    for rule in policy["spec"]["ingress"]:
        ports = {resolve_port(triton, p["port"]) for p in rule["ports"]}
        for peer in rule["from"]:
            assert set(peer) == {"podSelector"} or not (ports & inference), "inference ports open beyond pods"
        if not ports & inference:
            continue
        for peer in rule["from"]:
            for _, pod in manifests.pod_templates():
                if selects(peer["podSelector"]["matchLabels"], pod["metadata"]["labels"]):
                    admitted.add(pod["metadata"]["labels"]["app.kubernetes.io/component"])
    assert admitted == {"gateway", "worker-triton", "worker-db", "refresh"}


def test_network_policy_opens_only_the_metrics_port_to_prometheus(rendered):
    # Given the value set that names the Prometheus namespace in networkPolicy.metricsFrom
    manifests = rendered["gpu-objectstorage", NEWEST]
    [policy] = manifests.of("NetworkPolicy")
    triton = container(manifests.pod_of(manifests.component("triton")), "triton")
    extra = [r for r in policy["spec"]["ingress"] if any("namespaceSelector" in p for p in r["from"])]
    # Then that peer reaches the metrics port and nothing else
    assert len(extra) == 1
    assert {resolve_port(triton, p["port"]) for p in extra[0]["ports"]} == {port_named(triton, "metrics")}


# --- wiring between the components -------------------------------------------------------------

def test_triton_address_of_every_client_is_the_triton_service_grpc_port(case):
    name, manifests, values = case
    triton_workload = manifests.component("triton")
    triton_pod = manifests.pod_of(triton_workload)
    triton = container(triton_pod, "triton")
    for component in enabled_components(values, "gateway", "refresh"):
        # Then AISLE_TRITON_URL names a rendered Service that selects the Triton pods
        service, sp = addressed_service(manifests, component, "AISLE_TRITON_URL")
        assert selects(service["spec"]["selector"], triton_pod["metadata"]["labels"]), f"{name}: {service['metadata']['name']}"
        # And its port is that Service's gRPC port, which leads to Triton's --grpc-port
        assert sp["name"] == "grpc" and sp["appProtocol"] == "grpc"
        assert resolve_port(triton, sp["targetPort"]) == int(flag(triton["args"], "--grpc-port")) == values["triton"]["ports"]["grpc"]
        # And headless is used exactly when the values ask for client-side balancing
        assert (service["spec"].get("clusterIP") == "None") == (values["triton"]["clientLoadBalancing"] == "headless")


def test_gateway_address_of_its_clients_is_the_gateway_service_grpc_port(case):
    name, manifests, values = case
    gateway_pod = manifests.pod_of(manifests.component("gateway"))
    for component in enabled_components(values, "beat", "refresh"):
        # Then AISLE_GATEWAY_ADDRESS names the Service that selects the gateway pods, on its gRPC port
        service, sp = addressed_service(manifests, component, "AISLE_GATEWAY_ADDRESS")
        assert selects(service["spec"]["selector"], gateway_pod["metadata"]["labels"]), f"{name}: {component}"
        assert sp["name"] == "grpc" and sp["port"] == values["gateway"]["port"], f"{name}: {component}"


def test_recommendation_cache_settings_reach_the_gateway_and_its_warm_up(case):
    name, manifests, values = case
    for component in enabled_components(values, "gateway", "beat"):
        env = env_of(manifests.pod_of(manifests.component(component))["spec"]["containers"][0])
        # Then the gateway (which reads and writes the cache) and beat and the workers (which
        # warm it) see the same TTL and interval, as the values give them
        assert float(env["AISLE_RECOMMEND_CACHE_TTL_S"]["value"]) == values["app"]["recommendCacheTtlSeconds"], name
        assert float(env["AISLE_RECOMMEND_WARM_INTERVAL_S"]["value"]) == values["app"]["recommendWarmIntervalSeconds"]


def test_database_and_redis_urls_come_from_the_values(case):
    name, manifests, values = case
    for component in ("gateway", "worker-triton", "refresh", "migrations"):
        pod = manifests.pod_of(manifests.component(component))
        env = env_of(pod["spec"]["containers"][0])
        for var, service, key in (("AISLE_DATABASE_URL", "postgres", "database-url"), ("AISLE_REDIS_URL", "redis", "redis-url")):
            if component == "migrations" and service == "redis":
                continue
            # Then the URL is read from a Secret, never inlined in the pod spec
            ref = env[var]["valueFrom"]["secretKeyRef"]
            existing = values[service]["existingSecret"]
            if existing["name"]:
                # And an existing Secret is used as named, and the chart does not create it
                assert (ref["name"], ref["key"]) == (existing["name"], existing["key"]), f"{name} {component} {var}"
                assert not manifests.has("Secret", existing["name"])
            else:
                # And the chart's Secret holds exactly the URL from the values
                secret = manifests.get("Secret", ref["name"])
                assert secret["stringData"][ref["key"]] == values[service]["url"], f"{name} {component} {var}"
                assert ref["key"] == key
    # And no URL with a password appears outside Secrets
    for doc in manifests.docs:
        if doc["kind"] != "Secret":
            assert "postgresql://" not in yaml.safe_dump(doc) and "redis://" not in yaml.safe_dump(doc), doc["metadata"]["name"]


def test_api_keys_reach_only_the_gateway_and_its_clients_through_a_secret(case):
    name, manifests, values = case
    gateway = container(manifests.pod_of(manifests.component("gateway")), "gateway")
    env = env_of(gateway)
    if not values["apiKeys"]["enabled"]:
        # Then with keys off, no process gets AISLE_API_KEYS (empty means no authentication)
        assert "AISLE_API_KEYS" not in env
        return
    ref = env["AISLE_API_KEYS"]["valueFrom"]["secretKeyRef"]
    if values["apiKeys"]["existingSecret"]["name"]:
        assert ref["name"] == values["apiKeys"]["existingSecret"]["name"]
    else:
        # Then the chart's Secret holds the keys comma-separated
        assert manifests.get("Secret", ref["name"])["stringData"][ref["key"]] == ",".join(values["apiKeys"]["keys"])
    # And only the gateway's in-cluster clients get them too (the workers and the refresh job
    # warm its recommendation cache through Recommend), from the same Secret; no other container
    clients = {f"worker-{w}" for w in values["workers"]["deployments"]} | {"refresh"}
    for workload, pod in manifests.pod_templates():
        component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
        for c in pod["spec"]["containers"]:
            if c is gateway or workload is manifests.component("gateway"):
                continue
            if component in clients:
                assert env_of(c)["AISLE_API_KEYS"]["valueFrom"]["secretKeyRef"] == ref, component
            else:
                assert "AISLE_API_KEYS" not in env_of(c), component
    for doc in manifests.docs:
        if doc["kind"] != "Secret":
            for key in values["apiKeys"]["keys"]:
                assert key not in yaml.safe_dump(doc)


def test_gateway_serves_and_is_probed_on_the_configured_ports(case):
    name, manifests, values = case
    pod = manifests.pod_of(manifests.component("gateway"))
    gateway = container(pod, "gateway")
    grpc_port, metrics_port = values["gateway"]["port"], values["gateway"]["metricsPort"]
    # Then it runs `aisle serve` listening where the probes and the Service look
    assert gateway["args"][0] == "serve"
    assert flag(gateway["args"], "--address") == f"0.0.0.0:{grpc_port}"
    assert int(flag(gateway["args"], "--metrics-port")) == metrics_port
    assert port_named(gateway, "grpc") == grpc_port and port_named(gateway, "metrics") == metrics_port
    # And every probe is a gRPC health check on the gRPC port: readiness asks for the Aisle service
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert gateway[probe]["grpc"]["port"] == grpc_port, probe
    assert gateway["readinessProbe"]["grpc"]["service"] == "aisle.v1.Aisle"
    assert gateway["livenessProbe"]["grpc"]["service"] == ""
    # And the Service's grpc port reaches the container's
    service = manifests.get("Service", f"{manifests.component('gateway')['metadata']['name']}")
    assert selects(service["spec"]["selector"], pod["metadata"]["labels"])
    [sp] = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert resolve_port(gateway, sp["targetPort"]) == grpc_port and sp["appProtocol"] == "grpc"


def test_triton_probes_and_ports(case):
    name, manifests, values = case
    pod = manifests.pod_of(manifests.component("triton"))
    triton = container(pod, "triton")
    ports = values["triton"]["ports"]
    # Then tritonserver listens on the configured ports, named for the probes and Services
    for port in ("http", "grpc", "metrics"):
        assert int(flag(triton["args"], f"--{port}-port")) == ports[port] == port_named(triton, port)
    # And readiness and startup use /v2/health/ready on the HTTP port, liveness /v2/health/live
    for probe, path in (("startupProbe", "/v2/health/ready"), ("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        assert triton[probe]["httpGet"]["path"] == path
        assert resolve_port(triton, triton[probe]["httpGet"]["port"]) == ports["http"]
    # And the startup probe allows at least ten minutes for model load
    startup = triton["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    # And metrics are on, with GPU metrics exactly when there is a GPU
    assert flag(triton["args"], "--allow-metrics") == "true"
    assert flag(triton["args"], "--allow-gpu-metrics") == str(values["triton"]["gpu"]["enabled"]).lower()
    assert flag(triton["args"], "--model-repository") == "/models"
    # And /dev/shm is memory-backed for the Python backend
    shm = [v for v in pod["spec"]["volumes"] if v["name"] == next(m["name"] for m in triton["volumeMounts"] if m["mountPath"] == "/dev/shm")]
    assert shm[0]["emptyDir"]["medium"] == "Memory"


def test_workers_have_a_deployment_per_configured_entry(case):
    name, manifests, values = case
    enabled = {w: d for w, d in values["workers"]["deployments"].items() if d.get("enabled", True)}
    workers = [w for w, t in manifests.pod_templates() if t["metadata"]["labels"]["app.kubernetes.io/component"].startswith("worker-")]
    # Then there is one Deployment per enabled entry, running its queues and concurrency
    assert len(workers) == len(enabled)
    for key, conf in enabled.items():
        workload = manifests.component(f"worker-{key}")
        assert workload["kind"] == "Deployment" and workload["spec"]["replicas"] == conf["replicas"]
        worker = workload["spec"]["template"]["spec"]["containers"][0]
        assert worker["args"][0] == "worker"
        assert flag(worker["args"], "--queues") == ",".join(conf["queues"])
        assert int(flag(worker["args"], "--concurrency")) == conf["concurrency"]
        # And its liveness probe reads the metrics port it was told to serve
        metrics = int(flag(worker["args"], "--metrics-port"))
        assert metrics == values["workers"]["metricsPort"] == port_named(worker, "metrics")
        assert resolve_port(worker, worker["livenessProbe"]["httpGet"]["port"]) == metrics
        assert worker["resources"] == conf["resources"]


def test_beat_is_a_single_replica_that_never_overlaps(case):
    name, manifests, values = case
    if not values["beat"]["enabled"]:
        assert not any(t["metadata"]["labels"]["app.kubernetes.io/component"] == "beat" for _, t in manifests.pod_templates())
        return
    beat = manifests.component("beat")
    # Then beat is one replica, replaced with Recreate, and no autoscaler targets it
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"] == {"type": "Recreate"}
    assert beat["spec"]["template"]["spec"]["containers"][0]["args"] == ["beat"]
    assert all(h["spec"]["scaleTargetRef"]["name"] != beat["metadata"]["name"] for h in manifests.of("HorizontalPodAutoscaler"))


def test_refresh_cronjob_runs_the_full_batch_refresh(case):
    name, manifests, values = case
    cron = manifests.get("CronJob", f"{manifests.component('gateway')['metadata']['name'].removesuffix('-gateway')}-refresh")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]
    # Then it runs `aisle refresh all` on the configured schedule, one run at a time, without restarts
    assert pod["spec"]["containers"][0]["args"] == ["refresh", "all"]
    assert cron["spec"]["schedule"] == values["refresh"]["schedule"]
    assert cron["spec"]["timeZone"] == values["refresh"]["timeZone"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert pod["spec"]["restartPolicy"] == "Never"


def test_migrations_run_as_a_pre_install_and_pre_upgrade_hook(case):
    name, manifests, values = case
    job = manifests.component("migrations")
    annotations = job["metadata"]["annotations"]
    # Then the Job is a pre-install and pre-upgrade hook running `aisle db migrate`
    assert job["kind"] == "Job"
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    pod = job["spec"]["template"]
    assert pod["spec"]["containers"][0]["args"] == ["db", "migrate"]
    assert pod["spec"]["restartPolicy"] == "Never"
    # And everything it needs exists before it: its Secret and ServiceAccount are hooks of lower
    # weight (the release's own resources do not exist yet at pre-install), or exist already
    weight = int(annotations["helm.sh/hook-weight"])
    ref = pod["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]
    needed = [("Secret", ref["name"]), ("ServiceAccount", pod["spec"]["serviceAccountName"])]
    for kind, dep in needed:
        if manifests.has(kind, dep):
            hook = manifests.get(kind, dep)["metadata"].get("annotations", {})
            assert set(hook.get("helm.sh/hook", "").split(",")) == {"pre-install", "pre-upgrade"}, f"{kind} {dep} is not a hook"
            assert int(hook["helm.sh/hook-weight"]) < weight
        else:
            assert dep in (values["postgres"]["existingSecret"]["name"], values["serviceAccount"]["name"]), f"{name}: {kind} {dep} missing"


def test_gateway_has_an_autoscaler_and_a_disruption_budget(case):
    name, manifests, values = case
    gateway = manifests.component("gateway")
    hpas = [h for h in manifests.of("HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == gateway["metadata"]["name"]]
    # Then the HPA targets the gateway Deployment when autoscaling is on (and replicas are left to it)
    if values["gateway"]["autoscaling"]["enabled"]:
        assert len(hpas) == 1 and "replicas" not in gateway["spec"]
        assert hpas[0]["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    else:
        assert not hpas and gateway["spec"]["replicas"] == values["gateway"]["replicas"]
    # And the PodDisruptionBudget selects the gateway pods
    [pdb] = [p for p in manifests.of("PodDisruptionBudget") if p["metadata"]["name"] == gateway["metadata"]["name"]]
    assert selects(pdb["spec"]["selector"]["matchLabels"], gateway["spec"]["template"]["metadata"]["labels"])
    # And roll-outs never take a serving pod away before its replacement is ready
    assert gateway["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_triton_gpu_resources_and_scheduling(rendered):
    # Given GPU off (defaults) and GPU on
    off = container(rendered["default", NEWEST].pod_of(rendered["default", NEWEST].component("triton")), "triton")
    on_pod = rendered["gpu-objectstorage", NEWEST].pod_of(rendered["gpu-objectstorage", NEWEST].component("triton"))
    on = container(on_pod, "triton")
    # Then only the GPU set requests a GPU, tolerates GPU taints and selects GPU nodes
    assert "nvidia.com/gpu" not in off["resources"]["limits"]
    assert on["resources"]["limits"]["nvidia.com/gpu"] == on["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in on_pod["spec"]["tolerations"]
    assert on_pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


@pytest.mark.parametrize("gpu,variant", [(False, "cpu"), (True, "gpu")])
def test_image_source_copies_the_variant_matching_the_gpu_setting(helm, gpu, variant):
    # Given the model repository from the image, GPU on or off
    done = template(helm, None, NEWEST, "--set", f"triton.gpu.enabled={str(gpu).lower()}")
    assert done.returncode == 0, done.stderr
    manifests = Manifests(done.stdout)
    pod = manifests.pod_of(manifests.component("triton"))
    [init] = pod["spec"]["initContainers"]
    # Then the init container copies /model-repository/<variant> into the volume Triton serves
    assert init["image"] == "aisle-model-repository:0.1.0"
    assert f"/model-repository/{variant}/." in " ".join(init["command"])
    assert "/models" in {m["mountPath"] for m in init["volumeMounts"]}


def test_model_repository_from_a_pvc_or_object_storage(rendered):
    # Given the PVC value set
    pvc = rendered["cpu-pvc", NEWEST]
    pod = pvc.pod_of(pvc.component("triton"))
    models = next(m for m in container(pod, "triton")["volumeMounts"] if m["mountPath"] == "/models")
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == models["name"])
    # Then Triton mounts the claim read-only at the sub-path, with no init container
    assert volume["persistentVolumeClaim"] == {"claimName": "aisle-models", "readOnly": True}
    assert models["readOnly"] is True and models["subPath"] == "2024-06-01/cpu"
    assert "initContainers" not in pod["spec"]
    # Given the object storage value set
    obj = rendered["gpu-objectstorage", NEWEST]
    pod = obj.pod_of(obj.component("triton"))
    [init] = pod["spec"]["initContainers"]
    # Then rclone copies the remote into the volume Triton serves, credentials from the Secret
    assert init["command"] == ["rclone"] and init["args"][:3] == ["copy", ":s3,provider=AWS,env_auth=true:acme-models/aisle/2024-06-01/gpu", "/models"]
    assert "--s3-region=eu-west-1" in init["args"]
    assert init["envFrom"] == [{"secretRef": {"name": "aisle-model-bucket"}}]
    init_volume = next(m["name"] for m in init["volumeMounts"] if m["mountPath"] == "/models")
    assert init_volume == next(m["name"] for m in container(pod, "triton")["volumeMounts"] if m["mountPath"] == "/models")


@pytest.mark.parametrize(
    "value_set,extra,metric",
    [
        ("gpu-objectstorage", [], "queueTime"),
        ("cpu-pvc", [], "cpu"),
        ("default", ["--set", "triton.autoscaling.enabled=true"], "cpu"),
        ("default", ["--set", "triton.autoscaling.enabled=true", "--api-versions", "custom.metrics.k8s.io/v1beta1"], "queueTime"),
    ],
    ids=["forced-queue-time", "forced-cpu", "auto-without-adapter", "auto-with-adapter"],
)
def test_triton_autoscaler_uses_queue_time_where_an_adapter_exists(helm, value_set, extra, metric):
    # Given Triton autoscaling with a metric setting, with or without custom.metrics.k8s.io
    done = template(helm, VALUE_SETS[value_set], NEWEST, *extra)
    assert done.returncode == 0, done.stderr
    manifests = Manifests(done.stdout)
    triton = manifests.component("triton")
    [hpa] = [h for h in manifests.of("HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == triton["metadata"]["name"]]
    [spec] = hpa["spec"]["metrics"]
    # Then it scales on the adapter's queue-time metric or on CPU, and says which
    assert hpa["metadata"]["annotations"]["aisle.io/scaling-metric"] == metric
    if metric == "queueTime":
        assert spec["type"] == "Pods" and spec["pods"]["metric"]["name"] == "triton_queue_time_us_per_request"
    else:
        assert spec["type"] == "Resource" and spec["resource"]["name"] == "cpu"
    assert "replicas" not in triton["spec"]


# --- monitoring ---------------------------------------------------------------------------------

def test_service_monitors_find_the_metrics_ports(rendered):
    # Given the value set with monitoring on
    manifests = rendered["gpu-objectstorage", NEWEST]
    monitors = manifests.of("ServiceMonitor")
    assert len(monitors) == 3
    for monitor in monitors:
        # Then each selects exactly one Service, in the release namespace, with a metrics port
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        services = [s for s in manifests.of("Service") if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert len(services) == 1, monitor["metadata"]["name"]
        [endpoint] = monitor["spec"]["endpoints"]
        [port] = [p for p in services[0]["spec"]["ports"] if p["name"] == endpoint["port"]]
        # And that Service's pods serve metrics on the port it targets
        pods = [t for _, t in manifests.pod_templates() if selects(services[0]["spec"]["selector"], t["metadata"]["labels"])]
        assert pods, services[0]["metadata"]["name"]
        for pod in pods:
            assert resolve_port(pod["spec"]["containers"][0], port["targetPort"]) > 0


def test_grafana_dashboard_shows_gateway_and_triton_metrics(rendered):
    # Given the dashboard ConfigMap
    [cm] = rendered["gpu-objectstorage", NEWEST].of("ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["aisle.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    # Then it charts the gateway's gRPC metrics and Triton's queue and compute times
    for metric in ("grpc_server_handled_total", "grpc_server_handling_seconds_bucket", "nv_inference_queue_duration_us",
                   "nv_inference_request_success", "nv_inference_compute_infer_duration_us",
                   "aisle_gateway_recommend_cache_total", "aisle_gateway_degraded_total", "aisle_gateway_item_table_items"):
        assert metric in exprs, metric
    # And it is the file shipped in the chart, unchanged
    assert dashboard == json.loads((CHART / "dashboards" / "aisle.json").read_text())


def test_monitoring_is_off_by_default(rendered):
    manifests = rendered["default", NEWEST]
    assert not manifests.of("ServiceMonitor") and not manifests.of("ConfigMap")


# --- NOTES and README ---------------------------------------------------------------------------

def render_notes(helm: Path, tmp_path: Path, values: Path | None) -> str:
    """NOTES.txt as `helm install` prints it (rendered through a ConfigMap in a copy of the chart)."""
    chart = tmp_path / "aisle"
    shutil.copytree(CHART, chart)
    (chart / "notes.txt").write_text((chart / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "zz-notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  NOTES.txt: |\n'
        '{{ tpl (.Files.Get "notes.txt") . | indent 4 }}\n'
    )
    done = template(helm, values, NEWEST, "--show-only", "templates/zz-notes.yaml", chart=chart)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)["data"]["NOTES.txt"]


def test_notes_tell_how_to_call_search(helm, tmp_path):
    # Given the default install, When NOTES are rendered
    notes = render_notes(helm, tmp_path / "a", None)
    # Then they show a grpcurl call of Search through a port-forward to the gateway Service
    assert f"port-forward svc/{RELEASE}-aisle-gateway 50051:50051" in notes
    assert "aisle.v1.Aisle/Search" in notes and "grpcurl -plaintext" in notes
    assert "x-api-key" not in notes and "WARNING: apiKeys.enabled is false" in notes
    # Given API keys on, Then the call carries the x-api-key header and says where the key is
    notes = render_notes(helm, tmp_path / "b", VALUE_SETS["apikeys"])
    assert '-H "x-api-key: $AISLE_API_KEY"' in notes
    assert "get secret shop-search-config" in notes and "{.data.api-keys}" in notes


def test_readme_covers_install_upgrade_scale_out_and_sizing():
    readme = (CHART / "README.md").read_text()
    for heading in ("## Install", "## Upgrade", "## Scale-out", "## Sizing", "## Postgres"):
        assert heading in readme, heading
    # And it documents the queue-time metric the HPA expects from the adapter
    assert "nv_inference_queue_duration_us" in readme and "triton_queue_time_us_per_request" in readme
