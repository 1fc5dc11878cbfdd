"""Pod Security Standards (baseline, restricted; Kubernetes v1.35 rules) as the PodSecurity admission plugin
evaluates them, with its messages.

``violations(level, pod_spec)`` returns the plugin's ``reason (detail)`` strings in its order (checks sorted by
their ID); ``admission_message(namespace_labels, pod)`` is the whole 403 message the API server answers, or None
when the namespace's ``pod-security.kubernetes.io/enforce`` level admits the pod (no label: privileged).
``restricted_violations`` is the restricted profile's list (empty: admitted).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
VERSION_LABEL = "pod-security.kubernetes.io/enforce-version"
LEVELS = ("privileged", "baseline", "restricted")

# Volume types the restricted profile allows.
ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                   "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}

Pod = dict[str, Any]
Check = Callable[[Pod], str | None]  # a pod spec -> "reason (detail)" or None


def _containers(pod: Pod) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod.get("containers", []), *pod.get("ephemeralContainers", [])]


def _sc(container: dict[str, Any]) -> dict[str, Any]:
    return container.get("securityContext") or {}


def _quoted(names: list[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _containers_phrase(names: list[str], singular: str, plural: str) -> str:
    """``container "a" must ...`` / ``containers "a", "b" must ...``, as the plugin words it."""
    return f"container {_quoted(names)} {singular}" if len(names) == 1 else f"containers {_quoted(names)} {plural}"


def _result(reason: str, details: list[str]) -> str | None:
    return f"{reason} ({'; '.join(details)})" if details else None


def _host_namespaces(pod: Pod) -> str | None:
    found = [f"{f}=true" for f in ("hostNetwork", "hostPID", "hostIPC") if pod.get(f)]
    return f"host namespaces ({', '.join(found)})" if found else None


def _privileged(pod: Pod) -> str | None:
    bad = [c["name"] for c in _containers(pod) if _sc(c).get("privileged")]
    return _result("privileged", [_containers_phrase(bad, "must not set securityContext.privileged=true",
                                                     "must not set securityContext.privileged=true")] if bad else [])


def _added(c: dict[str, Any], allowed: set[str]) -> list[str]:
    return [a for a in (_sc(c).get("capabilities") or {}).get("add", []) if a not in allowed]


def _capabilities_baseline(pod: Pod) -> str | None:
    bad = {c["name"]: _added(c, BASELINE_CAPABILITIES) for c in _containers(pod)}
    bad = {n: a for n, a in bad.items() if a}
    caps = sorted({a for adds in bad.values() for a in adds})
    return _result("non-default capabilities", [_containers_phrase(
        list(bad), f"must not include {_quoted(caps)} in securityContext.capabilities.add",
        f"must not include {_quoted(caps)} in securityContext.capabilities.add")] if bad else [])


def _capabilities_restricted(pod: Pod) -> str | None:
    containers = _containers(pod)
    no_drop = [c["name"] for c in containers if "ALL" not in ((_sc(c).get("capabilities") or {}).get("drop") or [])]
    adds = {c["name"]: _added(c, {"NET_BIND_SERVICE"}) for c in containers}
    adds = {n: a for n, a in adds.items() if a}
    details = []
    if no_drop:
        details.append(_containers_phrase(no_drop, 'must set securityContext.capabilities.drop=["ALL"]',
                                          'must set securityContext.capabilities.drop=["ALL"]'))
    if adds:
        caps = sorted({a for added in adds.values() for a in added})
        details.append(_containers_phrase(list(adds), f"must not include {_quoted(caps)} in "
                                          "securityContext.capabilities.add",
                                          f"must not include {_quoted(caps)} in securityContext.capabilities.add"))
    return _result("unrestricted capabilities", details)


def _host_path(pod: Pod) -> str | None:
    bad = [v["name"] for v in pod.get("volumes", []) if "hostPath" in v]
    if not bad:
        return None
    return f"hostPath volumes ({'volume' if len(bad) == 1 else 'volumes'} {_quoted(bad)})"


def _host_ports(pod: Pod) -> str | None:
    bad = {c["name"]: [str(p["hostPort"]) for p in c.get("ports", []) if p.get("hostPort")] for c in _containers(pod)}
    bad = {n: p for n, p in bad.items() if p}
    if not bad:
        return None
    ports = [p for ps in bad.values() for p in ps]
    verb = "uses" if len(bad) == 1 else "use"
    noun = "hostPort" if len(ports) == 1 else "hostPorts"
    who = "container" if len(bad) == 1 else "containers"
    return f"hostPort ({who} {_quoted(list(bad))} {verb} {noun} {', '.join(ports)})"


def _proc_mount(pod: Pod) -> str | None:
    bad = [c for c in _containers(pod) if _sc(c).get("procMount", "Default") not in ("Default", None)]
    if not bad:
        return None
    kinds = sorted({str(_sc(c)["procMount"]) for c in bad})
    return _result("procMount", [_containers_phrase([c["name"] for c in bad],
                                                    f"must not set securityContext.procMount to {_quoted(kinds)}",
                                                    f"must not set securityContext.procMount to {_quoted(kinds)}")])


def _app_armor(pod: Pod) -> str | None:
    bad = []
    if ((pod.get("securityContext") or {}).get("appArmorProfile") or {}).get("type") == "Unconfined":
        bad.append('pod must not set appArmorProfile.type to "Unconfined"')
    names = [c["name"] for c in _containers(pod) if (_sc(c).get("appArmorProfile") or {}).get("type") == "Unconfined"]
    if names:
        bad.append(_containers_phrase(names, 'must not set appArmorProfile.type to "Unconfined"',
                                      'must not set appArmorProfile.type to "Unconfined"'))
    return _result("forbidden AppArmor profile", bad)


def _sysctls(pod: Pod) -> str | None:
    names = [s["name"] for s in (pod.get("securityContext") or {}).get("sysctls", []) if s["name"] not in SAFE_SYSCTLS]
    return f"forbidden sysctls ({', '.join(names)})" if names else None


def _seccomp_explicit_bad(pod: Pod, allowed: set[str]) -> list[str]:
    details = []
    pod_type = ((pod.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
    if pod_type is not None and pod_type not in allowed:
        details.append(f'pod must not set securityContext.seccompProfile.type to "{pod_type}"')
    bad = [c for c in _containers(pod) if (_sc(c).get("seccompProfile") or {}).get("type") not in (None, *allowed)]
    if bad:
        kinds = sorted({_sc(c)["seccompProfile"]["type"] for c in bad})
        details.append(_containers_phrase([c["name"] for c in bad],
                                          f"must not set securityContext.seccompProfile.type to {_quoted(kinds)}",
                                          f"must not set securityContext.seccompProfile.type to {_quoted(kinds)}"))
    return details


def _seccomp_baseline(pod: Pod) -> str | None:
    return _result("seccompProfile", _seccomp_explicit_bad(pod, {"RuntimeDefault", "Localhost"}) if any(
        t == "Unconfined" for t in _seccomp_types(pod)) else [])


def _seccomp_types(pod: Pod) -> list[Any]:
    return [((pod.get("securityContext") or {}).get("seccompProfile") or {}).get("type"),
            *[(_sc(c).get("seccompProfile") or {}).get("type") for c in _containers(pod)]]


def _seccomp_restricted(pod: Pod) -> str | None:
    allowed = {"RuntimeDefault", "Localhost"}
    details = _seccomp_explicit_bad(pod, allowed)
    pod_ok = ((pod.get("securityContext") or {}).get("seccompProfile") or {}).get("type") in allowed
    unset = [c["name"] for c in _containers(pod) if (_sc(c).get("seccompProfile") or {}).get("type") is None]
    if unset and not pod_ok:
        details.append(f"pod or {_containers_phrase(unset, '', '').strip()} must set securityContext.seccompProfile."
                       'type to "RuntimeDefault" or "Localhost"')
    return _result("seccompProfile", details)


def _restricted_volumes(pod: Pod) -> str | None:
    bad = {v["name"]: sorted(set(v) - {"name"} - ALLOWED_VOLUMES) for v in pod.get("volumes", [])}
    bad = {n: t for n, t in bad.items() if t}
    if not bad:
        return None
    kinds = sorted({t for ts in bad.values() for t in ts})
    if len(bad) == 1:
        noun = "type" if len(kinds) == 1 else "types"
        return f"restricted volume types (volume {_quoted(list(bad))} uses restricted volume {noun} {_quoted(kinds)})"
    return f"restricted volume types (volumes {_quoted(list(bad))} use restricted volume types {_quoted(kinds)})"


def _allow_privilege_escalation(pod: Pod) -> str | None:
    bad = [c["name"] for c in _containers(pod) if _sc(c).get("allowPrivilegeEscalation") is not False]
    return _result("allowPrivilegeEscalation != false", [_containers_phrase(
        bad, "must set securityContext.allowPrivilegeEscalation=false",
        "must set securityContext.allowPrivilegeEscalation=false")] if bad else [])


def _run_as_non_root(pod: Pod) -> str | None:
    pod_value = (pod.get("securityContext") or {}).get("runAsNonRoot")
    details = ["pod must not set securityContext.runAsNonRoot=false"] if pod_value is False else []
    explicit = [c["name"] for c in _containers(pod) if _sc(c).get("runAsNonRoot") is False]
    if explicit:
        details.append(_containers_phrase(explicit, "must not set securityContext.runAsNonRoot=false",
                                          "must not set securityContext.runAsNonRoot=false"))
    implicit = [c["name"] for c in _containers(pod) if _sc(c).get("runAsNonRoot") is None]
    if implicit and pod_value is not True:
        phrase = _containers_phrase(implicit, "", "").strip()
        details.append(f"pod or {phrase} must set securityContext.runAsNonRoot=true")
    return _result("runAsNonRoot != true", details)


def _run_as_user(pod: Pod) -> str | None:
    details = ["pod must not set runAsUser=0"] if (pod.get("securityContext") or {}).get("runAsUser") == 0 else []
    bad = [c["name"] for c in _containers(pod) if _sc(c).get("runAsUser") == 0]
    if bad:
        details.append(_containers_phrase(bad, "must not set runAsUser=0", "must not set runAsUser=0"))
    return _result("runAsUser=0", details)


# Check ID -> check, per level; the plugin reports in the order of the IDs.
BASELINE: dict[str, Check] = {
    "appArmorProfile": _app_armor, "capabilities_baseline": _capabilities_baseline,
    "hostNamespaces": _host_namespaces, "hostPathVolumes": _host_path, "hostPorts": _host_ports,
    "privileged": _privileged, "procMount": _proc_mount, "seccompProfile_baseline": _seccomp_baseline,
    "sysctls": _sysctls,
}
RESTRICTED: dict[str, Check] = {
    **{k: v for k, v in BASELINE.items() if k not in ("capabilities_baseline", "seccompProfile_baseline")},
    "allowPrivilegeEscalation": _allow_privilege_escalation, "capabilities_restricted": _capabilities_restricted,
    "restrictedVolumes": _restricted_volumes, "runAsNonRoot": _run_as_non_root, "runAsUser": _run_as_user,
    "seccompProfile_restricted": _seccomp_restricted,
}


def violations(level: str, pod: Pod) -> list[str]:
    """Return the ``reason (detail)`` of every check of ``level`` the pod spec fails, in the plugin's order."""
    if level not in LEVELS:
        raise ValueError(f"unknown Pod Security level {level!r} (known: {', '.join(LEVELS)})")
    checks = {"privileged": {}, "baseline": BASELINE, "restricted": RESTRICTED}[level]
    return [r for _, check in sorted(checks.items()) if (r := check(pod)) is not None]


def restricted_violations(pod: Pod) -> list[str]:
    """Return every restricted-profile rule the pod spec breaks (empty: it would be admitted)."""
    return violations("restricted", pod)


def baseline_violations(pod: Pod) -> list[str]:
    """Return every baseline-profile rule the pod spec breaks."""
    return violations("baseline", pod)


def level_of(namespace_labels: dict[str, str]) -> tuple[str, str]:
    """Return the enforced (level, version) a namespace's labels choose; no label: privileged, latest."""
    return (namespace_labels.get(ENFORCE_LABEL, "privileged"), namespace_labels.get(VERSION_LABEL, "latest"))


def admission_message(namespace_labels: dict[str, str], pod: dict[str, Any]) -> str | None:
    """Return the API server's Forbidden message for a Pod object the namespace's level refuses, else None."""
    level, version = level_of(namespace_labels)
    found = violations(level, pod.get("spec") or {})
    if not found:
        return None
    name = pod.get("metadata", {}).get("name", "")
    return f'pods "{name}" is forbidden: violates PodSecurity "{level}:{version}": {", ".join(found)}'
