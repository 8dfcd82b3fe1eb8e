"""The Kubernetes API as `museserve ops` uses it: the release's RayService, ConfigMap and
gateway Service, read and patched. Failures become one-line exceptions, never tracebacks:
`NoCluster` when there is no cluster to talk to, `OpsError` when an object is missing or
the API refuses."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from museserve.ops.patches import OpsError

IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
TIMEOUT_S = 15
RAYSERVICE = {"group": "ray.io", "version": "v1", "plural": "rayservices"}


class NoCluster(Exception):
    """No kubeconfig and not in a pod, or the API server does not answer."""


class Cluster:
    """One namespace of one cluster. The kubernetes package is imported here only, so the
    rest of the CLI never pays for it."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None):
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        try:
            if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config()
                default_namespace = IN_CLUSTER_NAMESPACE.read_text().strip()
            else:
                config.load_kube_config(config_file=kubeconfig, context=context)
                _, active = config.list_kube_config_contexts(config_file=kubeconfig)
                default_namespace = (active or {}).get("context", {}).get("namespace", "default")
        except (ConfigException, OSError) as e:
            where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise NoCluster(
                f"no Kubernetes cluster: no usable kubeconfig ({where}: {reason}) and not in a pod"
            ) from None
        self.namespace = namespace or default_namespace
        self.host = client.Configuration.get_default_copy().host
        self._custom = client.CustomObjectsApi()
        self._core = client.CoreV1Api()

    def rayservice(self, name: str) -> dict[str, Any]:
        return self._call(
            f"RayService {self.namespace}/{name}", self._custom.get_namespaced_custom_object, **RAYSERVICE, name=name
        )

    def patch_rayservice(self, name: str, patch: dict[str, Any]) -> None:
        """A JSON merge patch (the client's content type for custom objects)."""
        self._call(
            f"RayService {self.namespace}/{name}",
            self._custom.patch_namespaced_custom_object,
            **RAYSERVICE,
            name=name,
            body=patch,
        )

    def configmap(self, name: str) -> dict[str, Any]:
        found = self._call(f"ConfigMap {self.namespace}/{name}", self._core.read_namespaced_config_map, name=name)
        return found.to_dict()

    def patch_configmap(self, name: str, patch: dict[str, Any]) -> None:
        """Sent as a strategic merge patch, which for `data` (a plain map) is a merge patch."""
        self._call(f"ConfigMap {self.namespace}/{name}", self._core.patch_namespaced_config_map, name=name, body=patch)

    def service(self, name: str) -> dict[str, Any]:
        return self._call(f"Service {self.namespace}/{name}", self._core.read_namespaced_service, name=name).to_dict()

    def patch_service(self, name: str, patch: dict[str, Any]) -> None:
        """Strategic merge patch: a null selector value removes that key."""
        self._call(f"Service {self.namespace}/{name}", self._core.patch_namespaced_service, name=name, body=patch)

    def _call(self, what: str, method, **kwargs) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return method(namespace=self.namespace, _request_timeout=TIMEOUT_S, **kwargs)
        except ApiException as e:
            if e.status == 404:
                raise OpsError(f"{what} not found") from None
            raise OpsError(f"{what}: the API server answered {e.status} {e.reason}") from None
        except (HTTPError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise NoCluster(f"cannot reach the Kubernetes API at {self.host}: {reason}") from None
