"""deploy/k8s/overlays render to what is committed under deploy/k8s/rendered, every object is
valid against the Kubernetes schemas (offline, kubernetes-validate), and the rendered
manifests have the properties issue 15 asks for: hardened pods with their own
ServiceAccounts, native gRPC probes, PDBs, the gateway's HPA, NetworkPolicies that allow
exactly the calls the services make, and every start-up setting without a safe default set
in every workload that runs it (then accepted by load_settings).

The committed renders let all but the freshness check run without kubectl; where kubectl is
installed, the renders must equal `kubectl kustomize` of the overlays. To refresh them:
    for o in dev prod; do kubectl kustomize deploy/k8s/overlays/$o > deploy/k8s/rendered/$o.yaml; done
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.common.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
# The oldest Kubernetes the manifests support (pod-index label, native gRPC probes).
KUBERNETES_VERSION = "1.28.0"
CALENDAR_DIR = "/etc/dataserver/calendar"
CALENDAR_COPIES = {
    "tier_b_plan.toml": ROOT / "services" / "scheduler" / "tier_b_plan.toml",
    "holidays.csv": ROOT / "services" / "common" / "holidays.csv",
}

Doc = dict[str, Any]

# The entry point of each workload (its container command) and the settings it reads at
# start-up that have no default safe in a cluster: a default of 127.0.0.1, port 0, dev auth,
# the simulated clock, the embedded database, or a value that must agree across workloads.
_SERVICE = {"GRPC_HOST", "GRPC_PORT", "METRICS_PORT", "AUTH_MODE", "SERVICE_TOKEN", "MARKET_CLOCK"}
_ALL = {"MARKET_HOLIDAYS_FILE"}
_ACCOUNTS = {"FEED_CONNECTIONS", "ACCOUNTS"}  # ACCOUNTS: the overlay's way of naming them (below)
REQUIRED_ENV: dict[str, set[str]] = {
    "services.common.migrate": _ALL | {"DATABASE_URL"},
    "services.registry": _ALL | _SERVICE | {"DATABASE_URL", "MASTER_SOURCE", "GATEWAY_ADDR"},
    "services.subscription": _ALL | _SERVICE | _ACCOUNTS | {"DATABASE_URL", "REGISTRY_ADDR", "GATEWAY_ADDR"},
    "services.feed gateway": _ALL
    | _SERVICE
    | {"DATABASE_URL", "SUBSCRIPTION_ADDR", "REGISTRY_ADDR", "GATEWAY_SHARD_ADDRS"},
    "services.feed shard": _ALL | _SERVICE | _ACCOUNTS | {"SUBSCRIPTION_ADDR", "SHARD_ID", "FEED_URL"},
    "services.scheduler": _ALL | _SERVICE | {"DATABASE_URL", "REGISTRY_ADDR", "SUBSCRIPTION_ADDR", "TIER_B_PLAN_FILE"},
}
ACCOUNT_ENV = {"dev": {"FEED_ACCOUNTS"}, "prod": {"DHAN_ACCOUNTS", "DHAN_ACCOUNTS_DIR"}}
OVERLAY_VALUES = {
    "dev": {"MARKET_CLOCK": "simulated", "AUTH_MODE": "dev", "FEED_URL": "ws://simulator:8765"},
    "prod": {"MARKET_CLOCK": "exchange", "AUTH_MODE": "api_key", "FEED_URL": "wss://api-feed.dhan.co"},
}
# The workloads running our image, by name, and their entry points.
APPS = {
    "migrate": "services.common.migrate",
    "registry": "services.registry",
    "subscription": "services.subscription",
    "gateway": "services.feed gateway",
    "feed-shard": "services.feed shard",
    "scheduler": "services.scheduler",
}
SERVERS = [app for app in APPS if app != "migrate"]
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")


def rendered(overlay: str) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all((K8S / "rendered" / f"{overlay}.yaml").read_text()) if doc]


def identity(doc: Doc) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def workloads(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for doc in docs:
        if doc["kind"] in WORKLOAD_KINDS:
            yield doc["metadata"]["name"], doc


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def server(workload: Doc) -> Doc:
    (container,) = pod_spec(workload)["containers"]
    return container


def replicas(docs: list[Doc], name: str, workload: Doc) -> int:
    """The workload's replicas; a Deployment scaled by an HPA has at least its minReplicas."""
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler" and d["spec"]["scaleTargetRef"]["name"] == name]
    return int(hpas[0]["spec"]["minReplicas"]) if hpas else int(workload["spec"].get("replicas", 1))


# --- rendering and schemas -----------------------------------------------------------


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed: renders not re-checked")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_committed_renders_are_what_the_overlays_render(overlay: str) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    fresh = sorted((doc for doc in yaml.safe_load_all(out.stdout) if doc), key=identity)
    assert fresh == sorted(rendered(overlay), key=identity), (
        f"deploy/k8s/rendered/{overlay}.yaml is stale; refresh it (module docstring)"
    )


def test_calendar_copies_equal_the_files_the_code_ships() -> None:
    for name, source in CALENDAR_COPIES.items():
        assert (K8S / "base" / "calendar" / name).read_bytes() == source.read_bytes(), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_against_the_kubernetes_schemas(overlay: str) -> None:
    docs = rendered(overlay)
    assert len(docs) > 30
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    # The validator does reject what it should (guards against a silently empty schema set).
    broken = find(docs, "Deployment", "registry")
    broken = {**broken, "spec": {**broken["spec"], "replica": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


# --- workloads ------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_hardened_with_its_own_service_account(overlay: str) -> None:
    docs = rendered(overlay)
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    names = [name for name, _ in workloads(docs)]
    assert set(APPS) <= set(names)
    for name, workload in workloads(docs):
        spec = pod_spec(workload)
        assert spec["serviceAccountName"] == name and accounts[name]["automountServiceAccountToken"] is False, name
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["terminationGracePeriodSeconds"] >= 20, name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) >= {"cpu", "memory"}, (name, kind)
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            assert "emptyDir" in volumes[mounts["/tmp"]], name  # a writable /tmp on a read-only root


def test_termination_grace_outlasts_the_gateways_drain() -> None:
    # preStop pause, then the stream drain, then the unary drain (services/common/config.py).
    defaults = Settings()
    needed = 5 + defaults.gateway_drain_seconds + defaults.shutdown_grace_seconds
    for overlay in OVERLAYS:
        gateway = find(rendered(overlay), "Deployment", "gateway")
        assert pod_spec(gateway)["terminationGracePeriodSeconds"] > needed
        assert server(gateway)["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servers_probe_grpc_and_publish_grpc_and_metrics_ports(overlay: str) -> None:
    docs = rendered(overlay)
    for name in SERVERS:
        workload = next(w for n, w in workloads(docs) if n == name)
        container = server(workload)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert set(ports) == {"grpc", "metrics"}, name
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == ports["grpc"], (name, probe)
        service = find(docs, "Service", name)
        assert service["spec"]["selector"] == {"app": name}
        assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {"grpc": "grpc", "metrics": "metrics"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_replicas_pdbs_and_the_gateways_autoscaler(overlay: str) -> None:
    docs = rendered(overlay)
    shapes = {name: (w["kind"], replicas(docs, name, w)) for name, w in workloads(docs)}
    assert shapes["subscription"] == ("Deployment", 2) and shapes["scheduler"] == ("Deployment", 2)
    assert shapes["registry"] == ("Deployment", 1) and shapes["migrate"][0] == "Job"
    config = find(docs, "ConfigMap", "dataserver-config")["data"]
    accounts = find(docs, "ConfigMap", "dataserver-accounts")["data"]
    count = int(accounts["FEED_ACCOUNTS"]) if overlay == "dev" else len(accounts["DHAN_ACCOUNTS"].split(","))
    assert shapes["feed-shard"] == ("StatefulSet", count * int(config["FEED_CONNECTIONS"]))
    shard_id = next(e for e in server(find(docs, "StatefulSet", "feed-shard"))["env"] if e["name"] == "SHARD_ID")
    assert shard_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    hpa = find(docs, "HorizontalPodAutoscaler", "gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"] and hpa["spec"]["minReplicas"] >= 2
    assert "replicas" not in find(docs, "Deployment", "gateway")["spec"]  # the HPA owns it
    budgets = {d["spec"]["selector"]["matchLabels"]["app"] for d in docs if d["kind"] == "PodDisruptionBudget"}
    assert budgets == {name for name, (kind, n) in shapes.items() if kind != "Job" and n > 1}


# --- configuration --------------------------------------------------------------------


def container_env(docs: list[Doc], container: Doc) -> dict[str, str]:
    """Every variable the container gets from the manifests: literal values, ConfigMap values,
    the values of Secrets in the render (dev's); a key of a Secret created by hand (prod's) as
    "<secret name/key>"; a field reference as "<fieldPath>"."""
    secrets = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "Secret"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            raise AssertionError(f"unexpected envFrom {source}")
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            if ref["name"] in secrets:
                env[item["name"]] = base64.b64decode(secrets[ref["name"]][ref["key"]]).decode()
            else:
                env[item["name"]] = f"<{ref['name']}/{ref['key']}>"
        else:
            env[item["name"]] = f"<{item['valueFrom']['fieldRef']['fieldPath']}>"
    return env


def entry_point(container: Doc) -> str:
    command = container["command"]
    assert command[:2] == ["python", "-m"], command
    return " ".join(command[2:])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_start_up_setting_without_a_safe_default_is_set(overlay: str) -> None:
    docs = rendered(overlay)
    for name, workload in workloads(docs):
        if name not in APPS:
            continue
        container = server(workload)
        assert entry_point(container) == APPS[name]
        env = container_env(docs, container)
        required = REQUIRED_ENV[APPS[name]]
        if "ACCOUNTS" in required:
            required = (required - {"ACCOUNTS"}) | ACCOUNT_ENV[overlay]
        assert required <= set(env), (overlay, name, sorted(required - set(env)))
        for key, value in OVERLAY_VALUES[overlay].items():
            assert env.get(key, value) == value, (overlay, name, key)
        for key in ("TIER_B_PLAN_FILE", "MARKET_HOLIDAYS_FILE"):
            if key in env:
                assert env[key].startswith(CALENDAR_DIR + "/")
                mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                volume = next(v for v in pod_spec(workload)["volumes"] if v["name"] == mounts[CALENDAR_DIR])
                assert volume["configMap"]["name"].startswith("dataserver-calendar-"), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_load_settings_accepts_every_workloads_environment(overlay: str, tmp_path: Path) -> None:
    """The values themselves parse and agree: each container's environment, with the calendar
    files, Secrets and the pod ordinal stood in for, is what load_settings runs with."""
    docs = rendered(overlay)
    for name, workload in workloads(docs):
        if name not in APPS:
            continue
        env = container_env(docs, server(workload))
        env = {k: v.replace(CALENDAR_DIR, str(K8S / "base" / "calendar")) for k, v in env.items()}
        env = {k: "1" if v == "<metadata.labels['apps.kubernetes.io/pod-index']>" else v for k, v in env.items()}
        if env.get("DATABASE_URL", "").startswith("<"):
            env["DATABASE_URL"] = "postgresql://dataserver@db.example:5432/dataserver"
        if "DHAN_ACCOUNTS_DIR" in env:
            for account in env["DHAN_ACCOUNTS"].split(","):
                (tmp_path / account).mkdir(exist_ok=True)
                (tmp_path / account / "client_id").write_text("1100000001")
                (tmp_path / account / "access_token").write_text("token")
            env["DHAN_ACCOUNTS_DIR"] = str(tmp_path)
        for key in ("DHAN_CLIENT_ID", "DHAN_ACCESS_TOKEN", "SERVICE_TOKEN"):
            if env.get(key, "").startswith("<"):
                env[key] = "1100000001" if key == "DHAN_CLIENT_ID" else "secret"
        settings = load_settings(env)
        if overlay == "dev":
            assert settings.service_token is None, name  # AUTH_MODE=dev rejects an unknown token
        if overlay == "dev" and "DATABASE_URL" in REQUIRED_ENV[APPS[name]]:
            assert settings.database_url == "postgresql://dataserver:dataserver-dev@postgres:5432/dataserver", name
        assert settings.grpc_host == "0.0.0.0" and settings.metrics_port == 9464, name
        assert settings.market_clock == OVERLAY_VALUES[overlay]["MARKET_CLOCK"], name
        assert settings.dhan_credentials is (overlay == "prod" and name in ("registry", "subscription", "feed-shard"))
        if name == "gateway":
            assert len(settings.gateway_shard_addrs) == settings.feed_connections


def test_the_holidays_file_setting_is_the_calendar_every_process_reads(tmp_path: Path) -> None:
    """MARKET_HOLIDAYS_FILE (the mounted ConfigMap in a pod) replaces the shipped calendar."""
    holidays = tmp_path / "holidays.csv"
    holidays.write_text("calendar,date,closed,name\nNSE,2031-06-10,day,A test holiday\n")
    probe = (
        "import datetime as d, services.common.market_calendar as c;"
        "print(c.HOLIDAYS_FILE, c.is_trading_day(d.date(2031, 6, 10)), c.is_trading_day(d.date(2031, 6, 11)))"
    )
    env = {**os.environ, "MARKET_HOLIDAYS_FILE": str(holidays)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(holidays), "False", "True"]


# --- network policies -----------------------------------------------------------------


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


class Network:
    """Evaluates the rendered NetworkPolicies for a connection from one pod (or None: a client
    outside the namespace) to another pod's port (or None: an outside address, an ipBlock)."""

    def __init__(self, docs: list[Doc]) -> None:
        self.policies = [d["spec"] for d in docs if d["kind"] == "NetworkPolicy"]
        self.labels: dict[str, dict[str, str]] = {}
        self.ports: dict[str, dict[str, int]] = {}
        for name, workload in workloads(docs):
            self.labels[name] = workload["spec"]["template"]["metadata"]["labels"]
            self.ports[name] = {
                p["name"]: p["containerPort"] for c in pod_spec(workload)["containers"] for p in c.get("ports", [])
            }

    def _peer_matches(self, peers: list[Doc] | None, other: str | None) -> bool:
        if not peers:
            return True
        for peer in peers:
            if other is None and "ipBlock" in peer:
                return True
            # A pod of this namespace; a namespaceSelector peer (DNS, Prometheus) is another namespace.
            in_namespace = other is not None and "podSelector" in peer and "namespaceSelector" not in peer
            if in_namespace and selects(peer["podSelector"], self.labels[other or ""]):
                return True
        return False

    def _port_matches(self, ports: list[Doc] | None, pod: str | None, port: int) -> bool:
        if not ports:
            return True
        for rule in ports:
            number = rule["port"]
            if isinstance(number, str):
                number = self.ports[pod or ""].get(number) if pod else None
            if number == port:
                return True
        return False

    def _allowed(self, pod: str, direction: str, other: str | None, port: int, target: str | None) -> bool:
        field = "ingress" if direction == "Ingress" else "egress"
        peer = "from" if field == "ingress" else "to"
        chosen = [
            p for p in self.policies if selects(p["podSelector"], self.labels[pod]) and direction in p["policyTypes"]
        ]
        assert chosen, f"{pod} has no {direction} policy (default deny missing)"
        return any(
            self._peer_matches(rule.get(peer), other) and self._port_matches(rule.get("ports"), target, port)
            for policy in chosen
            for rule in policy.get(field, [])
        )

    def can_call(self, source: str | None, target: str | None, port: str | int) -> bool:
        number = self.ports[target][port] if isinstance(port, str) and target else int(port)
        egress = source is None or self._allowed(source, "Egress", target, number, target)
        ingress = target is None or self._allowed(target, "Ingress", source, number, target)
        return egress and ingress


# Who calls whom (None: a terminal, an operator or the internet), from the clients each service
# opens (services/*/server.py): everything else is denied.
CALLS = {
    (None, "gateway"), (None, "subscription"), (None, "registry"),
    ("gateway", "feed-shard"), ("gateway", "subscription"), ("gateway", "registry"),
    ("feed-shard", "subscription"),
    ("subscription", "registry"), ("subscription", "gateway"),
    ("registry", "gateway"),
    ("scheduler", "subscription"), ("scheduler", "registry"),
}  # fmt: skip
DATABASE_USERS = {"registry", "subscription", "gateway", "scheduler", "migrate"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_exactly_the_calls_the_services_make(overlay: str) -> None:
    docs = rendered(overlay)
    net = Network(docs)
    for source in [None, *APPS]:
        for target in SERVERS:
            assert net.can_call(source, target, "grpc") == ((source, target) in CALLS), (overlay, source, target)
    for app in APPS:
        assert net.can_call(app, None, 443) == (app in ("feed-shard", "registry") and overlay == "prod"), app
        # The metrics port: from Prometheus (another namespace) only, never from a terminal or a peer.
        if app in SERVERS:
            assert not net.can_call(None, app, "metrics") and not net.can_call("gateway", app, "metrics"), app
    prometheus = next(
        p
        for p in net.policies
        if p["podSelector"] == {"matchLabels": {"app.kubernetes.io/part-of": "dataserver"}}
        and p["policyTypes"] == ["Ingress"]
    )
    assert [port["port"] for port in prometheus["ingress"][0]["ports"]] == ["metrics"]
    if overlay == "dev":
        for app in APPS:
            assert net.can_call(app, "postgres", "postgres") == (app in DATABASE_USERS), app
            assert net.can_call(app, "simulator", "feed") == (app == "feed-shard"), app
        assert not net.can_call(None, "postgres", "postgres") and not net.can_call(None, "simulator", "feed")
    else:
        for app in APPS:
            assert net.can_call(app, None, 5432) == (app in DATABASE_USERS), app
