"""The Helm chart (deploy/helm/synctalk): lint, Kubernetes' own schemas for what it renders, its values
schema, and the properties that matter in production, asserted on the rendered objects."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import tomllib
from urllib.parse import urlsplit

import pytest
import yaml
from deploy_helpers import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    PRODUCTION,
    REPO,
    Helm,
    containers,
    parse,
    pod_spec,
    render,
)

from services.cli.main import COMMANDS

CUSTOM_KINDS = {
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "ScaledObject": "keda.sh/v1alpha1",
    "TriggerAuthentication": "keda.sh/v1alpha1",
}
SECRET_ENV = {
    "SYNCTALK_SECRET_KEY", "SYNCTALK_DATABASE_URL", "SYNCTALK_BROKER_URL", "SYNCTALK_METRICS_TOKEN",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
}  # fmt: skip
ALERTS = {
    "SynctalkQueuedStageTooOld", "SynctalkQueueGrowingWithoutWorkers", "SynctalkGpuWorkersIdleWhileQueueWaits",
    "SynctalkStagesStuck", "SynctalkJobFailureRateHigh", "SynctalkSchedulerDown", "SynctalkSchedulerNoLeader",
    "SynctalkSchedulerStalled",
}  # fmt: skip


@pytest.fixture(params=["default", "production"])
def rendered(request):
    return request.getfixturevalue(f"{request.param}_render")


def _values_args(which: str) -> list[str]:
    return ["-f", str(PRODUCTION)] if which == "production" else []


# --- lint and Kubernetes' schemas ---------------------------------------------------------------------
@pytest.mark.parametrize("which", ["default", "production"])
def test_helm_lint_strict(helm: Helm, which: str):
    args = ["--kube-version", KUBE_VERSION, *_values_args(which)]
    out = helm.run("lint", "--strict", str(CHART), *args, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("which", ["default", "production"])
def test_rendered_objects_pass_kubernetes_validate_strict(request, kubernetes_validate, tmp_path, which: str):
    rendered = request.getfixturevalue(f"{which}_render")
    manifest = tmp_path / f"{which}.yaml"
    manifest.write_text(rendered.text)
    out = subprocess.run(
        [*kubernetes_validate, "--strict", "-k", KUBE_VERSION, "--quiet", str(manifest)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    # kubernetes-validate has no schemas for custom resources: it warns and passes them. Only those kinds
    # may be skipped (a built-in kind with a mistyped apiVersion would land here too); pytest checks them.
    skipped = []
    for line in (out.stdout + out.stderr).splitlines():
        if not line.strip():
            continue
        m = re.match(r"WARN .* Couldn't find schema for kind (\w+) with api version (\S+) ", line)
        assert m, f"unexpected kubernetes-validate output: {line}"
        assert CUSTOM_KINDS.get(m[1]) == m[2], line
        skipped.append(m[1])
    assert sorted(skipped) == sorted(d["kind"] for d in rendered.docs if d["kind"] in CUSTOM_KINDS)


def test_objects_are_named_for_the_release_and_left_to_its_namespace(rendered):
    for doc in rendered.docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"].startswith("synctalk")
        assert "namespace" not in doc["metadata"]  # helm -n decides


def test_kinds_by_default_and_in_production(default_render, production_render):
    def kinds(r):
        return sorted(d["kind"] for d in r.docs)

    assert kinds(default_render) == sorted(
        ["ConfigMap", "Deployment", "Deployment", "Deployment", "Deployment", "HorizontalPodAutoscaler",
         "Job", "PodDisruptionBudget", "PodDisruptionBudget", "Secret", "Secret", "Service", "Service",
         "ServiceAccount"]
    )  # fmt: skip
    assert not set(kinds(default_render)) & set(CUSTOM_KINDS)  # the CRDs may be absent: off by default
    # production: existingSecret (no Secret rendered), ingress, KEDA and the Prometheus Operator objects
    assert kinds(production_render) == sorted(
        ["ConfigMap", "Deployment", "Deployment", "Deployment", "Deployment", "HorizontalPodAutoscaler",
         "Ingress", "Job", "PodDisruptionBudget", "PodDisruptionBudget", "PrometheusRule", "ScaledObject",
         "ScaledObject", "Service", "Service", "ServiceAccount", "ServiceMonitor", "ServiceMonitor",
         "TriggerAuthentication"]
    )  # fmt: skip


def test_clusters_older_than_1_27_are_refused(helm: Helm):
    out = helm.run("template", "synctalk", str(CHART), "--kube-version", "1.26.0", check=False)
    assert out.returncode != 0 and "kubeVersion" in out.stderr


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["kubeVersion"] == ">=1.27.0-0"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]  # the images' default tag is the platform's version


# --- commands, probes, the scheduler -------------------------------------------------------------------
def test_commands_are_the_clis(rendered):
    args = {c["name"]: c["args"] for w in rendered.workloads() for c in containers(w)}
    for name, argv in args.items():
        assert argv[0] == "synctalk" and argv[1] in COMMANDS, name
    assert args["api"][:7] == ["synctalk", "api", "--host", "0.0.0.0", "--port", "8000", "--workers"]
    assert int(args["api"][7]) >= 1
    assert args["scheduler"] == ["synctalk", "scheduler"] and args["migrate"] == ["synctalk", "migrate"]
    workers = {w["metadata"]["name"]: containers(w)[0]["args"] for w in rendered.of_kind("Deployment")}
    assert workers["synctalk-worker-gpu"] == ["synctalk", "worker", "--queues", "gpu", "--concurrency", "1"]
    assert workers["synctalk-worker-cpu"][:4] == ["synctalk", "worker", "--queues", "cpu"]
    cpu = workers["synctalk-worker-cpu"]
    assert cpu[4] == "--concurrency" and int(cpu[5]) >= 1


def test_api_probes(rendered):
    api = containers(rendered.one("Deployment", "synctalk-api"))[0]
    assert api["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert api["startupProbe"]["httpGet"]["path"] == "/healthz"
    service = rendered.one("Service", "synctalk-api")
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_scheduler_is_one_replica_recreated_with_its_metrics_port(rendered):
    sched = rendered.one("Deployment", "synctalk-scheduler")
    assert sched["spec"]["replicas"] == 1 and sched["spec"]["strategy"] == {"type": "Recreate"}
    c = containers(sched)[0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["SYNCTALK_SCHEDULER_METRICS_PORT"] == "9464"
    assert c["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    service = rendered.one("Service", "synctalk-scheduler")
    assert service["spec"]["ports"][0]["port"] == 9464
    assert service["spec"]["selector"].items() <= sched["spec"]["template"]["metadata"]["labels"].items()
    # nothing scales it
    for so in rendered.of_kind("ScaledObject") + rendered.of_kind("HorizontalPodAutoscaler"):
        assert so["spec"]["scaleTargetRef"]["name"] != "synctalk-scheduler"


def test_scheduler_metrics_port_follows_values(helm: Helm):
    r = render(helm, "--set", "scheduler.metricsPort=9500")
    c = containers(r.one("Deployment", "synctalk-scheduler"))[0]
    assert {"name": "SYNCTALK_SCHEDULER_METRICS_PORT", "value": "9500"} in c["env"]
    assert c["ports"][0]["containerPort"] == 9500


# --- GPU workers ------------------------------------------------------------------------------------------
def test_gpu_worker_gets_one_gpu_its_nodes_and_a_long_grace(default_render, production_render):
    for r in (default_render, production_render):
        gpu = r.one("Deployment", "synctalk-worker-gpu")
        spec = pod_spec(gpu)
        c = containers(gpu)[0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert "nvidia.com/gpu" not in c["resources"].get("requests", {})
        assert spec["terminationGracePeriodSeconds"] >= 300  # a checkpoint is written and uploaded
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        shm = next(v for v in spec["volumes"] if v["name"] == "shm")
        assert shm["emptyDir"]["medium"] == "Memory" and shm["emptyDir"]["sizeLimit"]
        assert {"name": "shm", "mountPath": "/dev/shm"} in c["volumeMounts"]
        assert c["image"].split("/")[-1].startswith("worker-gpu")
    prod = pod_spec(production_render.one("Deployment", "synctalk-worker-gpu"))
    values = yaml.safe_load(PRODUCTION.read_text())["workers"]["gpu"]
    assert prod["nodeSelector"] == values["nodeSelector"]
    assert prod["tolerations"] == values["tolerations"]
    # the cpu worker never asks for a GPU nor tolerates GPU nodes
    cpu = production_render.one("Deployment", "synctalk-worker-cpu")
    assert "nvidia.com/gpu" not in containers(cpu)[0]["resources"]["limits"]
    assert "tolerations" not in pod_spec(cpu)


def test_a_gpu_limit_set_in_values_cannot_become_two(helm: Helm):
    limits = '{"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 2}'
    r = render(helm, "--set-json", f"workers.gpu.resources.limits={limits}")
    gpu = containers(r.one("Deployment", "synctalk-worker-gpu"))[0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_worker_cache_bound_stays_below_its_volume(rendered):
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for queue in ("cpu", "gpu"):
        w = rendered.one("Deployment", f"synctalk-worker-{queue}")
        data = next(v for v in pod_spec(w)["volumes"] if v["name"] == "data")["emptyDir"]["sizeLimit"]
        limit = int(data[:-2]) * units[data[-2:]]
        env = {e["name"]: e.get("value") for e in containers(w)[0]["env"]}
        # the kubelet evicts a pod whose emptyDir outgrows its sizeLimit: the cache's LRU bound must be lower
        assert 0 < int(env["SYNCTALK_WORKER_CACHE_MAX_BYTES"]) < limit


# --- the migration hook -----------------------------------------------------------------------------------
def _hook(doc: dict) -> dict:
    return doc["metadata"].get("annotations", {})


def test_migration_is_a_pre_install_and_pre_upgrade_hook(rendered):
    job = rendered.one("Job", "synctalk-migrate")
    ann = _hook(job)
    assert set(ann["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert set(ann["helm.sh/hook-delete-policy"].split(",")) == {"before-hook-creation", "hook-succeeded"}
    spec = pod_spec(job)
    assert spec["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 0
    # at pre-install time none of the release's own objects exist: it must not need them
    c = containers(job)[0]
    assert "envFrom" not in c  # the ConfigMap's settings come inline
    assert "serviceAccountName" not in spec and spec["automountServiceAccountToken"] is False
    env = {e["name"]: e for e in c["env"]}
    assert env["SYNCTALK_ENVIRONMENT"]["value"] == "production"
    assert set(env) >= {"SYNCTALK_DATABASE_URL", "SYNCTALK_SECRET_KEY"}
    secret_names = {e["valueFrom"]["secretKeyRef"]["name"] for e in env.values() if "valueFrom" in e}
    assert len(secret_names) == 1
    (secret_name,) = secret_names
    hook_weight = int(ann["helm.sh/hook-weight"])
    hook_secrets = [s for s in rendered.of_kind("Secret") if s["metadata"]["name"] == secret_name]
    if hook_secrets:  # the chart's secrets: a hook copy made before the Job, deleted after success
        sann = _hook(hook_secrets[0])
        assert set(sann["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
        assert int(sann["helm.sh/hook-weight"]) < hook_weight
        assert "hook-succeeded" in sann["helm.sh/hook-delete-policy"]
        assert set(hook_secrets[0]["data"]) == {"secret-key", "database-url"}
        # the release's own Secret stays an ordinary resource (uninstall removes it, rollback restores it)
        main = rendered.one("Secret", "synctalk")
        assert "helm.sh/hook" not in _hook(main)
        assert hook_secrets[0]["data"]["database-url"] == main["data"]["database-url"]
    else:  # an existing Secret, there before the release
        assert secret_name == yaml.safe_load(PRODUCTION.read_text())["secrets"]["existingSecret"]
        assert not rendered.of_kind("Secret")
    # the inline settings are exactly the ConfigMap's
    cm = rendered.one("ConfigMap", "synctalk")["data"]
    assert {k: v["value"] for k, v in env.items() if "value" in v} == cm


def test_migration_can_be_turned_off(helm: Helm):
    r = render(helm, "--set", "migration.enabled=false")
    assert not r.of_kind("Job") and [s["metadata"]["name"] for s in r.of_kind("Secret")] == ["synctalk"]


# --- images -----------------------------------------------------------------------------------------------
def _images(r) -> list[str]:
    return [c["image"] for w in r.workloads() for c in containers(w)]


def test_images_are_pinned_never_latest(rendered):
    # default: the chart's appVersion; the production example names the same release explicitly
    tags = {yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]}
    tags.add(yaml.safe_load(PRODUCTION.read_text())["image"]["tag"])
    for image in _images(rendered):
        assert "latest" not in image.lower()
        _, _, tag = image.rpartition(":")
        assert "@sha256:" in image or tag in tags, image
    assert "latest" not in rendered.text.lower()


def test_digest_wins_over_tag(helm: Helm):
    digest = "sha256:" + "a" * 64
    r = render(helm, "--set", f"image.workerGpu.digest={digest}")
    image = containers(r.one("Deployment", "synctalk-worker-gpu"))[0]["image"]
    assert image == f"registry.example.com/synctalk/worker-gpu@{digest}"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("image.tag=latest", "image.tag"),
        ("image.api.tag=latest", "image.api.tag"),
        ("image.workerGpu.tag=Latest", "image.workerGpu.tag"),
        ("image.workerCpu.tag=latest-cuda", "image.workerCpu.tag"),
        ("api.replicass=3", "replicass"),  # a typo
        ("workers.gpu.replica=2", "replica"),
        ("keda.enable=true", "enable"),
        ("metrics.serviceMonitor.enabeld=true", "enabeld"),
        ("config.storageURL=s3://x", "storageURL"),
        ("api.replicas=-1", "api.replicas"),  # negative counts
        ("workers.cpu.replicas=-2", "workers.cpu.replicas"),
        ("workers.gpu.keda.maxReplicaCount=-1", "maxReplicaCount"),
        ("workers.gpu.keda.minReplicaCount=-1", "minReplicaCount"),
        ("workers.gpu.concurrency=2", "workers.gpu"),  # one process per GPU
        ("api.tmpSizeLimit=lots", "tmpSizeLimit"),
        ("broker.databaseIndex=16", "databaseIndex"),
    ],
)
def test_values_schema_refuses(helm: Helm, setting: str, message: str):
    out = helm.template("--set", setting, check=False)
    assert out.returncode != 0, f"{setting} was accepted"
    assert "values don't meet the specifications of the schema" in out.stderr, out.stderr
    assert message in out.stderr, out.stderr


def test_latest_is_refused_even_without_the_schema(helm: Helm):
    out = helm.template("--skip-schema-validation", "--set", "image.tag=latest", check=False)
    assert out.returncode != 0 and "latest" in out.stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["broker.auth=true"], "secrets.redisPassword"),
        (["metrics.serviceMonitor.enabled=true"], "secrets.metricsToken"),
        (["keda.prometheus.enabled=true"], "keda.enabled"),
        (["keda.enabled=true", "workers.gpu.keda.minReplicaCount=9"], "minReplicaCount 9 is above"),
        (["ingress.enabled=true"], "ingress.hosts"),
        (["keda.enabled=true", "keda.prometheus.enabled=true"], "keda.prometheus.serverAddress"),
    ],
)
def test_inconsistent_values_are_refused(helm: Helm, settings: list[str], message: str):
    args = [a for s in settings for a in ("--set", s)]
    out = helm.template(*args, check=False)
    assert out.returncode != 0 and message in out.stderr, out.stderr


# --- secrets and settings ------------------------------------------------------------------------------------
def test_secrets_reach_containers_only_through_secret_references(rendered):
    secret_names = {s["metadata"]["name"] for s in rendered.of_kind("Secret")} | {
        yaml.safe_load(PRODUCTION.read_text())["secrets"]["existingSecret"]
    }
    for w in rendered.workloads():
        for c in containers(w):
            for src in c.get("envFrom", []):
                assert set(src) <= {"configMapRef", "secretRef"}, src
                if "secretRef" in src:
                    assert src["secretRef"]["name"] in secret_names
            for e in c.get("env", []):
                if e["name"] in SECRET_ENV:
                    assert "value" not in e, f"{c['name']}: {e['name']} given in clear"
                    assert e["valueFrom"]["secretKeyRef"]["name"] in secret_names
                assert "value" not in e or "://" not in e["value"] or "@" not in e["value"], e
    for cm in rendered.of_kind("ConfigMap"):
        assert not set(cm["data"]) & SECRET_ENV
        for value in cm["data"].values():
            assert "@" not in urlsplit(value).netloc, value  # no credentials in a URL
    # which container reads which secret: the metrics token only the API
    for w in rendered.workloads():
        for c in containers(w):
            names = {e["name"] for e in c.get("env", []) if "valueFrom" in e}
            assert ("SYNCTALK_METRICS_TOKEN" in names) == (c["name"] == "api"), c["name"]
            assert {"SYNCTALK_SECRET_KEY", "SYNCTALK_DATABASE_URL"} <= names


def _secret(r, name="synctalk") -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in r.one("Secret", name)["data"].items()}


def test_secret_urls_are_built_from_values(helm: Helm):
    r = render(
        helm, "--set", "database.host=db.example,database.sslmode=require,secrets.databasePassword=p@ss:w/rd",
        "--set", "broker.host=cache.example,broker.port=6380,broker.databaseIndex=3,broker.tls=true,broker.auth=true",
        "--set", "secrets.redisPassword=r3d/s,secrets.secretKey=k" + "x" * 40,
    )  # fmt: skip
    data = _secret(r)
    db = urlsplit(data["database-url"])
    assert db.scheme == "postgresql+psycopg2" and db.hostname == "db.example" and db.port == 5432
    assert db.password == "p%40ss%3Aw%2Frd" and db.query == "sslmode=require"  # escaped in the URL
    broker = urlsplit(data["broker-url"])
    assert (broker.scheme, broker.hostname, broker.port) == ("rediss", "cache.example", 6380)
    assert broker.path == "/3"
    assert broker.query == "ssl_cert_reqs=required"  # Celery refuses a rediss:// URL without it
    assert data["redis-password"] == "r3d/s" and data["secret-key"] == "k" + "x" * 40
    assert "metrics-token" not in data and "aws-access-key-id" not in data  # optional keys left out


def test_generated_secret_key_is_long_and_random(default_render, helm: Helm):
    key = _secret(default_render)["secret-key"]
    assert len(key) == 64 and key != _secret(render(helm))["secret-key"]


def test_configmap_settings(default_render, production_render, helm: Helm):
    cm = default_render.one("ConfigMap", "synctalk")["data"]
    assert cm["SYNCTALK_ENVIRONMENT"] == "production" and cm["SYNCTALK_DATA_DIR"] == "/data"
    assert cm["SYNCTALK_MODEL_DIR"] == "/models" and cm["SYNCTALK_STORAGE_URL"].startswith("s3://")
    assert cm["SYNCTALK_PUBLIC_URL"] == f"http://synctalk-api.{NAMESPACE}.svc:8000"
    assert all(isinstance(v, str) for v in cm.values())
    prod = production_render.one("ConfigMap", "synctalk")["data"]
    values = yaml.safe_load(PRODUCTION.read_text())["config"]
    assert prod["SYNCTALK_PUBLIC_URL"] == values["publicUrl"]
    assert prod["SYNCTALK_TRUSTED_PROXIES"] == values["trustedProxies"]
    assert prod["SYNCTALK_DIRECT_UPLOAD_MAX_BYTES"] == str(values["directUploadMaxBytes"])
    assert values["extraEnv"].items() <= prod.items()
    assert cm["SYNCTALK_LOG_FORMAT"] == "json" and "SYNCTALK_OTLP_ENDPOINT" not in cm  # no traces by default
    assert prod["SYNCTALK_OTLP_ENDPOINT"] == values["otlpEndpoint"]
    assert prod["SYNCTALK_TRACE_SAMPLE_RATIO"] == "0.2"
    r = render(
        helm, "--set", "config.s3EndpointUrl=https://s3.example,ingress.enabled=true,ingress.hosts[0]=dub.example",
        "--set", "ingress.tls[0].secretName=t,ingress.tls[0].hosts[0]=dub.example",
    )  # fmt: skip
    cm = r.one("ConfigMap", "synctalk")["data"]
    assert cm["SYNCTALK_S3_ENDPOINT_URL"] == "https://s3.example"
    assert cm["SYNCTALK_PUBLIC_URL"] == "https://dub.example"  # from the ingress host with TLS


def test_pods_roll_when_settings_change(helm: Helm, default_render):
    before = default_render.one("Deployment", "synctalk-api")["spec"]["template"]["metadata"]["annotations"]
    after = render(helm, "--set", "config.trustedProxies=10.0.0.0/8")
    annotations = after.one("Deployment", "synctalk-api")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/config"] != before["checksum/config"]


# --- security, resources, volumes -----------------------------------------------------------------------------
def test_every_pod_and_container_is_locked_down_with_resources(rendered):
    assert rendered.workloads()
    for sa in rendered.of_kind("ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False
    for w in rendered.workloads():
        spec = pod_spec(w)
        assert spec["automountServiceAccountToken"] is False
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 10001 and psc["runAsUser"] != 0
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "hostNetwork" not in spec and "hostPID" not in spec
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in containers(w):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"] == {"drop": ["ALL"]}
            assert sc.get("privileged", False) is False
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            res = c["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res[kind]), f"{w['metadata']['name']}/{c['name']}: {kind}"
            # a read-only root: /tmp and /data are bounded emptyDirs
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            for path in ("/tmp", "/data"):
                vol = volumes[mounts[path]]
                assert vol["emptyDir"]["sizeLimit"], f"{w['metadata']['name']}: {path}"


def test_api_tmp_is_bounded_from_values(helm: Helm):
    r = render(helm, "--set", "api.tmpSizeLimit=3Gi")
    volumes = {v["name"]: v for v in pod_spec(r.one("Deployment", "synctalk-api"))["volumes"]}
    assert volumes["tmp"]["emptyDir"] == {"sizeLimit": "3Gi"}


def test_no_service_links(rendered):
    # Kubernetes would otherwise add SYNCTALK_API_PORT=tcp://... and the like beside the settings
    for w in rendered.workloads():
        assert pod_spec(w)["enableServiceLinks"] is False


# --- scaling: HPA, PDBs, KEDA ------------------------------------------------------------------------------------
def test_api_hpa_owns_its_replicas(default_render, helm: Helm):
    hpa = default_render.one("HorizontalPodAutoscaler", "synctalk-api")
    target = hpa["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "synctalk-api"}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in default_render.one("Deployment", "synctalk-api")["spec"]
    r = render(helm, "--set", "api.autoscaling.enabled=false,api.replicas=3")
    assert not r.of_kind("HorizontalPodAutoscaler")
    assert r.one("Deployment", "synctalk-api")["spec"]["replicas"] == 3


def test_pdbs_select_their_pods(rendered, helm: Helm):
    pdbs = {p["metadata"]["name"]: p for p in rendered.of_kind("PodDisruptionBudget")}
    assert set(pdbs) == {"synctalk-api", "synctalk-worker-cpu"}  # gpu: optional, off by default
    for name, pdb in pdbs.items():
        labels = rendered.one("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["spec"]["maxUnavailable"] >= 1
    r = render(helm, "--set", "workers.gpu.pdb.enabled=true")
    assert r.one("PodDisruptionBudget", "synctalk-worker-gpu")["spec"]["maxUnavailable"] == 1


def test_without_keda_workers_have_fixed_replicas(default_render):
    assert not default_render.of_kind("ScaledObject")
    for queue in ("cpu", "gpu"):
        assert default_render.one("Deployment", f"synctalk-worker-{queue}")["spec"]["replicas"] == 1


def test_keda_scales_each_worker_on_its_celery_list(production_render):
    values = yaml.safe_load(PRODUCTION.read_text())
    broker = values["broker"]
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in production_render.of_kind("ScaledObject")}
    assert set(scaled) == {"synctalk-worker-cpu", "synctalk-worker-gpu"}
    for name, so in scaled.items():
        queue = name.rsplit("-", 1)[1]
        spec = so["spec"]
        assert spec["scaleTargetRef"]["kind"] == "Deployment"
        deployment = production_render.one("Deployment", name)
        assert "replicas" not in deployment["spec"]  # KEDA owns the count
        redis = [t for t in spec["triggers"] if t["type"] == "redis"]
        assert len(redis) == 1
        meta = redis[0]["metadata"]
        assert all(isinstance(v, str) for v in meta.values()), meta  # KEDA's metadata is a string map
        assert meta["listName"] == queue
        assert meta["databaseIndex"] == str(broker["databaseIndex"])
        assert (meta["host"], meta["port"]) == (broker["host"], str(broker["port"]))
        assert meta["enableTLS"] == "true"
        assert meta["listLength"] == str(values["workers"][queue]["keda"]["listLength"])
        assert meta["activationListLength"] == "0"
        auth = production_render.one("TriggerAuthentication", redis[0]["authenticationRef"]["name"])
        assert auth["spec"]["secretTargetRef"] == [
            {"parameter": "password", "name": values["secrets"]["existingSecret"], "key": "redis-password"}
        ]
        assert spec["maxReplicaCount"] == values["workers"][queue]["keda"]["maxReplicaCount"]
        assert spec["cooldownPeriod"] >= 900  # long enough for a stage in progress
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        assert behavior["stabilizationWindowSeconds"] >= 300
        prom = [t for t in spec["triggers"] if t["type"] == "prometheus"]
        assert len(prom) == 1 and f'queue="{queue}"' in prom[0]["metadata"]["query"]
        assert "synctalk_workers_busy" in prom[0]["metadata"]["query"]
        assert all(isinstance(v, str) for v in prom[0]["metadata"].values())
    assert scaled["synctalk-worker-gpu"]["spec"]["minReplicaCount"] == 0  # GPUs scale to zero
    assert scaled["synctalk-worker-cpu"]["spec"]["minReplicaCount"] == 1
    # the api and the scheduler are not KEDA's
    assert production_render.one("Deployment", "synctalk-scheduler")["spec"]["replicas"] == 1


def test_keda_and_celery_read_the_same_redis_database(helm: Helm):
    """The broker URL the workers use and the list KEDA reads come from the same values."""
    r = render(
        helm, "--set", "keda.enabled=true,broker.host=cache.internal,broker.port=6390,broker.databaseIndex=5",
        "--set", "broker.auth=true,secrets.redisPassword=pw",
    )  # fmt: skip
    url = urlsplit(_secret(r)["broker-url"])
    for so in r.of_kind("ScaledObject"):
        (trigger,) = so["spec"]["triggers"]  # no Prometheus trigger unless asked for
        meta = trigger["metadata"]
        assert (meta["host"], int(meta["port"])) == (url.hostname, url.port)
        assert "/" + meta["databaseIndex"] == url.path
        assert meta["enableTLS"] == "false" and url.scheme == "redis"
    assert r.of_kind("TriggerAuthentication")
    # without a Redis password there is nothing to authenticate with
    r = render(helm, "--set", "keda.enabled=true")
    assert not r.of_kind("TriggerAuthentication")
    assert all("authenticationRef" not in so["spec"]["triggers"][0] for so in r.of_kind("ScaledObject"))


# --- ingress, monitoring ------------------------------------------------------------------------------------------
def test_ingress_with_tls(production_render):
    ing = production_render.one("Ingress", "synctalk")
    values = yaml.safe_load(PRODUCTION.read_text())["ingress"]
    assert ing["spec"]["ingressClassName"] == values["className"]
    assert ing["spec"]["tls"] == values["tls"]
    assert [r["host"] for r in ing["spec"]["rules"]] == values["hosts"]
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "synctalk-api", "port": {"name": "http"}}


def test_service_monitors(production_render):
    values = yaml.safe_load(PRODUCTION.read_text())
    api = production_render.one("ServiceMonitor", "synctalk-api")
    (endpoint,) = api["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    assert endpoint["authorization"] == {
        "type": "Bearer", "credentials": {"name": values["secrets"]["existingSecret"], "key": "metrics-token"}
    }  # fmt: skip
    sched = production_render.one("ServiceMonitor", "synctalk-scheduler")
    (endpoint,) = sched["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    for sm, svc in ((api, "synctalk-api"), (sched, "synctalk-scheduler")):
        assert values["metrics"]["serviceMonitor"]["labels"].items() <= sm["metadata"]["labels"].items()
        service = production_render.one("Service", svc)
        assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_prometheus_rule_is_the_alert_file(production_render, helm: Helm):
    values = yaml.safe_load(PRODUCTION.read_text())["metrics"]["prometheusRule"]
    source = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    rule = production_render.one("PrometheusRule", "synctalk")
    assert values["labels"].items() <= rule["metadata"]["labels"].items()
    rendered = rule["spec"]["groups"]
    assert [g["name"] for g in rendered] == [g["name"] for g in source["groups"]]
    for got, want in zip(rendered, source["groups"], strict=True):
        for r_got, r_want in zip(got["rules"], want["rules"], strict=True):
            assert r_got["labels"] == {**values["alertLabels"], **r_want["labels"]}
            assert {k: v for k, v in r_got.items() if k != "labels"} == {
                k: v for k, v in r_want.items() if k != "labels"
            }
    names = {r["alert"] for g in rendered for r in g["rules"]}
    assert names == ALERTS
    disable = "metrics.prometheusRule.disabledAlerts[0]=SynctalkStagesStuck"
    r = render(helm, "-f", str(PRODUCTION), "--set", disable)
    names = {x["alert"] for g in r.one("PrometheusRule", "synctalk")["spec"]["groups"] for x in g["rules"]}
    assert names == ALERTS - {"SynctalkStagesStuck"}


def test_custom_resources_have_the_fields_their_crds_know(production_render):
    """No CRD schemas here: the fields the chart sets are checked against the CRDs' field names."""
    known = {
        "ScaledObject": {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
                         "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "advanced", "triggers", "fallback"},
        "TriggerAuthentication": {"secretTargetRef", "env", "hashiCorpVault", "podIdentity"},
        "ServiceMonitor": {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels"},
        "PrometheusRule": {"groups"},
    }  # fmt: skip
    redis_fields = {"address", "host", "port", "listName", "listLength", "activationListLength", "databaseIndex",
                    "enableTLS", "unsafeSsl", "username", "password"}  # fmt: skip
    prometheus_fields = {"serverAddress", "query", "threshold", "activationThreshold", "ignoreNullValues"}
    endpoint_fields = {"port", "path", "interval", "scrapeTimeout", "authorization", "scheme", "tlsConfig"}
    for kind, api_version in CUSTOM_KINDS.items():
        for doc in production_render.of_kind(kind):
            assert doc["apiVersion"] == api_version
            assert set(doc["spec"]) <= known[kind], (kind, set(doc["spec"]) - known[kind])
    for so in production_render.of_kind("ScaledObject"):
        for t in so["spec"]["triggers"]:
            assert set(t) <= {"type", "metadata", "authenticationRef", "name", "metricType"}
            allowed = redis_fields if t["type"] == "redis" else prometheus_fields
            assert set(t["metadata"]) <= allowed, set(t["metadata"]) - allowed
    for sm in production_render.of_kind("ServiceMonitor"):
        for e in sm["spec"]["endpoints"]:
            assert set(e) <= endpoint_fields
    for g in production_render.one("PrometheusRule", "synctalk")["spec"]["groups"]:
        for r in g["rules"]:
            assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}
            assert re.fullmatch(r"\d+[smh]", r["for"])


def _notes(helm: Helm, tmp_path, *args: str) -> str:
    """NOTES.txt as `helm install` would print it. `helm install --dry-run` needs a cluster and `helm
    template` leaves the notes out, so a copy of the chart renders them through `tpl` into an object."""
    chart = tmp_path / "synctalk"
    shutil.copytree(CHART, chart)
    (chart / "files" / "NOTES.txt").write_text((chart / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "notes-probe.yaml").write_text(
        'kind: NotesProbe\nnotes: {{ tpl (.Files.Get "files/NOTES.txt") . | toJson }}\n'
    )
    out = helm.run("template", "synctalk", str(chart), "--namespace", NAMESPACE, *args)
    (probe,) = [d for d in parse(out.stdout) if d["kind"] == "NotesProbe"]
    return probe["notes"]


def test_notes_render(helm: Helm, tmp_path):
    notes = _notes(helm, tmp_path / "prod", "-f", str(PRODUCTION))
    assert "synctalk keys create --tenant studio" in notes and "https://dub.example.com" in notes
    assert "KEDA sizes them" in notes and "WARNING" not in notes
    notes = _notes(helm, tmp_path / "default")
    assert "port-forward svc/synctalk-api" in notes and "Fixed replica counts" in notes
    assert "WARNING: SYNCTALK_SECRET_KEY was generated" in notes
