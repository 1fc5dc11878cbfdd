"""The inference Deployment, Service and PodDisruptionBudget as rendered: strict schemas, the restricted Pod
Security Standard, the inference node group, the pinned version, and rollout status read as kubectl does."""

from __future__ import annotations

import copy
from typing import Any, cast

import kubernetes_validate
import pytest
import yaml
from lightkube.codecs import from_dict
from lightkube.models.core_v1 import ContainerStatus
from lightkube.resources.apps_v1 import Deployment

from shipyard.errors import ConfigError
from shipyard.kube import inference
from shipyard.kube.progress import container_problem, rollout_state
from shipyard.settings import Settings
from tests.infra import REPO, kubernetes_version

EKS_KUBERNETES = kubernetes_version()
MLFLOW = "http://mlflow.shipyard.svc:5000"


def settings(**overrides: Any) -> Settings:
    return Settings(**{"mlflow_tracking_uri": MLFLOW, "image": "123.dkr.ecr.aws/shipyard:0.1.0", **overrides})


def rendered(**overrides: Any) -> list[dict[str, Any]]:
    s = settings(**overrides)
    return [inference.deployment(s, "digits", "7"), inference.service(s), inference.disruption_budget(s)]


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return dict(deployment["spec"]["template"]["spec"])


# --- The "restricted" Pod Security Standard (kubernetes.io/docs/concepts/security/pod-security-standards),
# baseline rules included, as the PodSecurity admission controller checks a pod spec.
_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}
_BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                          "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
_SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                 "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                 "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                 "net.ipv4.tcp_keepalive_probes"}


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """Return every rule of the restricted profile the pod spec breaks (empty: admitted)."""
    bad: list[str] = []
    pod_sc = spec.get("securityContext", {})
    containers = [*spec.get("initContainers", []), *spec.get("containers", []), *spec.get("ephemeralContainers", [])]
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            bad.append(f"{key} is set")
    if pod_sc.get("windowsOptions", {}).get("hostProcess"):
        bad.append("pod hostProcess")
    for sysctl in pod_sc.get("sysctls", []):
        if sysctl["name"] not in _SAFE_SYSCTLS:
            bad.append(f"unsafe sysctl {sysctl['name']}")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= _RESTRICTED_VOLUMES:
            bad.append(f"volume {volume['name']} has type {sorted(kinds - _RESTRICTED_VOLUMES)}")
    pod_seccomp = pod_sc.get("seccompProfile", {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        bad.append(f"pod seccompProfile {pod_seccomp}")
    for c in containers:
        sc, name = c.get("securityContext", {}), c["name"]
        if sc.get("privileged"):
            bad.append(f"{name} privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name} allowPrivilegeEscalation is not false")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            bad.append(f"{name} runAsNonRoot is not true")
        if 0 in (sc.get("runAsUser"), pod_sc.get("runAsUser")):
            bad.append(f"{name} runAsUser is 0")
        seccomp = sc.get("seccompProfile", {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name} seccompProfile is {seccomp}")
        capabilities = sc.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            bad.append(f"{name} does not drop ALL capabilities")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name} adds capabilities {capabilities['add']}")
        if set(capabilities.get("add", [])) - _BASELINE_CAPABILITIES:
            bad.append(f"{name} adds non-baseline capabilities")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            bad.append(f"{name} uses a hostPort")
        if sc.get("procMount", "Default") != "Default":
            bad.append(f"{name} procMount")
        if sc.get("appArmorProfile", {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
            bad.append(f"{name} appArmorProfile")
        if sc.get("seLinuxOptions", {}).get("type") not in (None, "", "container_t", "container_init_t",
                                                            "container_kvm_t", "container_engine_t"):
            bad.append(f"{name} seLinuxOptions type")
    return bad


@pytest.mark.parametrize("gpus", [1, 0], ids=["gpu", "cpu"])
def test_deployment_service_and_budget_pass_strict_validation_for_the_eks_version(gpus: int) -> None:
    for manifest in rendered(inference_gpus=gpus):
        kubernetes_validate.validate(manifest, EKS_KUBERNETES, strict=True)


def test_strict_validation_lets_a_misspelled_field_through_nowhere() -> None:
    deployment = rendered()[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, EKS_KUBERNETES, strict=True)


def test_the_pod_meets_the_restricted_pod_security_standard() -> None:
    spec = pod_spec(rendered()[0])
    assert restricted_violations(spec) == []
    container = spec["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["runAsUser"] != 0
    # Scratch for temp files and MLflow's model download is a writable emptyDir.
    assert {"name": "scratch", "mountPath": "/tmp"} in container["volumeMounts"]
    assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == "scratch")
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TMPDIR"] == "/tmp" and env["HOME"] == "/tmp"


@pytest.mark.parametrize("break_it, rule", [
    (lambda s: s["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True), "allowPrivilegeEsc"),
    (lambda s: s["containers"][0]["securityContext"]["capabilities"].update(drop=[]), "drop ALL"),
    (lambda s: s["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "adds capab"),
    (lambda s: s["containers"][0]["securityContext"].update(runAsUser=0), "runAsUser is 0"),
    (lambda s: [c["securityContext"].pop("runAsNonRoot") for c in s["containers"]]
     and s["securityContext"].pop("runAsNonRoot"), "runAsNonRoot"),
    (lambda s: s["containers"][0]["securityContext"].update(seccompProfile={"type": "Unconfined"}), "seccomp"),
    (lambda s: s["volumes"].append({"name": "host", "hostPath": {"path": "/"}}), "hostPath"),
    (lambda s: s.update(hostNetwork=True), "hostNetwork"),
    (lambda s: s["containers"][0]["securityContext"].update(privileged=True), "privileged"),
], ids=["escalation", "capabilities", "add-cap", "root", "non-root", "seccomp", "hostpath", "hostnet", "privileged"])
def test_the_restricted_checker_catches_each_rule(break_it: Any, rule: str) -> None:
    spec = copy.deepcopy(pod_spec(rendered()[0]))
    break_it(spec)
    assert any(rule in v for v in restricted_violations(spec)), restricted_violations(spec)


def test_gpu_pods_land_on_the_inference_node_group_with_toleration_limit_and_service_account() -> None:
    spec = pod_spec(rendered(inference_gpus=1, inference_cpu="3", inference_memory="12Gi")[0])
    container = spec["containers"][0]
    assert spec["nodeSelector"] == {"role": "inference"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert container["resources"] == {"requests": {"cpu": "3", "memory": "12Gi"},
                                      "limits": {"memory": "12Gi", "nvidia.com/gpu": 1}}
    assert spec["serviceAccountName"] == "shipyard-inference"
    # The inference image (no Prefect, no training stack), not SHIPYARD_IMAGE: named as docs/cluster.md builds it.
    assert container["image"] == "123.dkr.ecr.aws/shipyard-inference:0.1.0"
    assert container["command"] == ["python", "-m", "shipyard.serving"]


def test_cpu_pods_ask_for_no_gpu_and_tolerate_no_gpu_taint() -> None:
    spec = pod_spec(rendered(inference_gpus=0)[0])
    assert "tolerations" not in spec and "nvidia.com/gpu" not in spec["containers"][0]["resources"]["limits"]
    assert spec["nodeSelector"] == {"role": "inference"}


def test_the_inference_service_account_exists_and_needs_no_aws_role() -> None:
    # The endpoint loads the model through MLflow's artifact proxy, so its pods hold no S3 permission at all.
    base = list(yaml.safe_load_all((REPO / "infra" / "k8s" / "base.yaml").read_text()))
    names = {d["metadata"]["name"] for d in base if d and d.get("kind") == "ServiceAccount"}
    assert rendered()[0]["spec"]["template"]["spec"]["serviceAccountName"] in names
    cluster = yaml.safe_load((REPO / "infra" / "eks" / "cluster.yaml").read_text())
    accounts = {a["metadata"]["name"] for a in cluster["iam"]["serviceAccounts"]}
    assert "shipyard-inference" not in accounts
    group = next(g for g in cluster["managedNodeGroups"] if g["name"] == "inference")
    gpu_tainted = any(t["key"] == "nvidia.com/gpu" for t in group.get("taints", []))
    # The default must be able to land on the node group the cluster file creates.
    assert (Settings().inference_gpus > 0) == gpu_tainted


def test_every_replica_serves_the_pinned_version() -> None:
    deployment = rendered()[0]
    template = deployment["spec"]["template"]
    args = template["spec"]["containers"][0]["args"]
    assert args[args.index("--model-uri") + 1] == "models:/digits/7"
    assert args[args.index("--model-version") + 1] == "7" and args[args.index("--model-name") + 1] == "digits"
    assert template["metadata"]["labels"]["shipyard.dev/model-version"] == "7"
    assert template["metadata"]["annotations"] == {"shipyard.dev/model-name": "digits",
                                                   "shipyard.dev/model-version": "7"}
    # The version label is not in the selector: a new version is a rolling update, not a second Deployment.
    assert "shipyard.dev/model-version" not in deployment["spec"]["selector"]["matchLabels"]


def test_rolling_update_never_drops_below_the_replica_count_and_drains_before_sigterm() -> None:
    deployment = rendered(inference_progress_deadline_seconds=300, inference_replicas=3)[0]
    spec, pod = deployment["spec"], pod_spec(deployment)
    container = pod["containers"][0]
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    assert spec["replicas"] == 3 and spec["progressDeadlineSeconds"] == 300 and spec["minReadySeconds"] > 0
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/ping"
    assert container["startupProbe"]["httpGet"]["path"] == "/ping"
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert sleep > 0 and pod["terminationGracePeriodSeconds"] > sleep


def test_service_and_budget_select_the_deployments_pods_by_its_named_port() -> None:
    deployment, service, budget = rendered()
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port = deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert budget["spec"]["maxUnavailable"] == 1 and budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert all(m["metadata"]["namespace"] == "shipyard" for m in (deployment, service, budget))


def test_the_tracking_uri_reaches_the_pod_through_env_and_credentials_are_refused() -> None:
    env = {e["name"]: e["value"] for e in pod_spec(rendered()[0])["containers"][0]["env"]}
    assert env["MLFLOW_TRACKING_URI"] == MLFLOW
    with pytest.raises(ConfigError, match="SHIPYARD_MLFLOW_TRACKING_URI carries credentials") as caught:
        rendered(mlflow_tracking_uri="https://alice:s3cret@mlflow.example")
    assert "s3cret" not in str(caught.value) and "\n" not in str(caught.value)


def test_a_dedicated_inference_cluster_gets_its_own_mlflow_uri_and_the_pipeline_keeps_its_own() -> None:
    internal = "http://internal-mlflow-0123.elb.us-west-2.amazonaws.com:5000"
    env = {e["name"]: e["value"]
           for e in pod_spec(rendered(inference_mlflow_tracking_uri=internal)[0])["containers"][0]["env"]}
    assert env["MLFLOW_TRACKING_URI"] == env["MLFLOW_REGISTRY_URI"] == internal
    with pytest.raises(ConfigError, match=r"^SHIPYARD_INFERENCE_MLFLOW_TRACKING_URI carries credentials"):
        rendered(inference_mlflow_tracking_uri="https://bob:pw@mlflow.example")


def test_a_local_mlflow_database_is_refused_naming_the_setting(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match=r"SHIPYARD_MLFLOW_TRACKING_URI=sqlite:.* is not a server inference pods"):
        rendered(mlflow_tracking_uri=None, home=tmp_path)


def test_a_version_that_is_no_label_value_is_refused() -> None:
    with pytest.raises(ConfigError, match="model version 'latest champion' of 'digits'"):
        inference.deployment(settings(), "digits", "latest champion")


def _deployment(generation: int, observed: int, wanted: int, replicas: int, updated: int, available: int,
                reason: str = "ReplicaSetUpdated") -> Deployment:
    return from_dict({"apiVersion": "apps/v1", "kind": "Deployment",  # type: ignore[return-value]
                      "metadata": {"name": "d", "generation": generation},
                      "spec": {"replicas": wanted, "selector": {}, "template": {}},
                      "status": {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": updated,
                                 "availableReplicas": available,
                                 "conditions": [{"type": "Progressing", "status": "True", "reason": reason}]}})


@pytest.mark.parametrize("args, done, failed, says", [
    ((2, 1, 2, 2, 2, 2), False, False, "spec update to be observed"),
    ((2, 2, 2, 3, 1, 2), False, False, "1 out of 2 new replicas"),
    ((2, 2, 2, 3, 2, 2), False, False, "1 old replicas are pending termination"),
    ((2, 2, 2, 2, 2, 1), False, False, "1 of 2 updated replicas are available"),
    ((2, 2, 2, 2, 2, 2), True, False, "successfully rolled out"),
    ((2, 3, 2, 2, 2, 2), True, False, "successfully rolled out"),
    ((2, 2, 2, 3, 1, 2, "ProgressDeadlineExceeded"), False, True, "exceeded its progress deadline"),
    ((3, 2, 2, 2, 2, 2, "ProgressDeadlineExceeded"), False, False, "spec update to be observed"),
], ids=["unobserved", "updating", "old-left", "unavailable", "done", "observed-ahead", "deadline",
        "deadline-of-an-older-spec"])
def test_rollout_state_follows_kubectl_rollout_status(args: tuple[Any, ...], done: bool, failed: bool,
                                                      says: str) -> None:
    state = rollout_state(_deployment(*args))
    assert (state.done, state.failed) == (done, failed) and says in state.message


def _container(state: dict[str, Any], **more: Any) -> ContainerStatus:
    fields = {"name": "server", "image": "x", "imageID": "", "ready": False, "restartCount": 0, "state": state}
    return cast(ContainerStatus, ContainerStatus.from_dict({**fields, **more}))


def test_container_problems_carry_the_waiting_reason_message_and_last_exit() -> None:
    pull = _container({"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "x"'}})
    assert container_problem(pull) == 'ImagePullBackOff: Back-off pulling image "x"'
    crash = _container({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s"}},
                       lastState={"terminated": {"exitCode": 137, "reason": "OOMKilled"}})
    assert container_problem(crash) == "CrashLoopBackOff: back-off 1m20s (last exit code 137, OOMKilled)"
    assert container_problem(_container({"waiting": {"reason": "ContainerCreating"}})) is None
    assert container_problem(_container({"running": {}})) is None


class _Parsed(Exception):
    pass


def test_the_server_accepts_the_pods_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from shipyard.serving.__main__ import main

    container = pod_spec(rendered()[0])["containers"][0]
    assert container["command"][-2:] == ["-m", "shipyard.serving"]
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Parsed(parse(self, *args, **kwargs))  # a bad argument exits here with argparse's error instead

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(_Parsed) as caught:
        main(container["args"])
    parsed = caught.value.args[0]
    assert (parsed.model_uri, parsed.host, parsed.port) == ("models:/digits/7", "0.0.0.0", 8080)


@pytest.mark.parametrize(("image", "inference_image", "expected"), [
    ("123.dkr.ecr.us-west-2.amazonaws.com/shipyard:0.1.0", None,
     "123.dkr.ecr.us-west-2.amazonaws.com/shipyard-inference:0.1.0"),
    ("registry:5000/shipyard", None, "registry:5000/shipyard-inference:latest"),
    ("shipyard:0.1.0", "ghcr.io/team/serve:7", "ghcr.io/team/serve:7"),
])
def test_the_inference_pods_run_the_inference_image(image: str, inference_image: str | None, expected: str) -> None:
    pod = inference.pod_template(settings(image=image, inference_image=inference_image), "m", "1")
    assert pod["spec"]["containers"][0]["image"] == expected
