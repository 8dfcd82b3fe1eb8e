"""`museserve ops`: operate a museserve release in Kubernetes through the API server.

The contract with the Helm chart (helm/museserve), which these commands rely on:
- The RayService (ray.io/v1) is named after the release (`--name`, default `museserve`). Its
  `serveConfigV2` is YAML with one application whose deployments are `gateway`,
  `preprocess` and `pool-<POOL>`; each has `num_replicas` (an int) or `num_replicas: auto`
  with an `autoscaling_config` (min_replicas, max_replicas). Its `args.config_sha256` is the
  SHA-256 of the museserve config file, which the app builder waits for.
- The museserve config file is key `museserve.yaml` of the ConfigMap `<name>-config`; the
  pools' A/B splits live there (`pools[].ab.share`).
- Callers reach the gateways through the Service `<name>-gateway`.

What each command changes, always shown as a diff first and applied only with `--yes`:
- `scale`: the deployment's replica count (or autoscaling bounds) in `serveConfigV2`, one
  JSON merge patch of the RayService; KubeRay applies it to Serve in place.
- `canary`: the pool's `ab.share` in the ConfigMap, then the new file's digest in
  `serveConfigV2`, so Serve rebuilds the app once the kubelet has refreshed the file.
- `adapters load|unload`: the pool deployment's `user_config.adapters` (keep, disabled) in
  `serveConfigV2`; Serve hands it to every replica of the pool live (`ops.adapters`).
- `drain`: adds the selector `museserve.io/drained: "true"` (no pod has it) to the gateway
  Service, so it has no endpoints: no new connection reaches a gateway, while requests in
  flight and already-open gRPC channels go on until their clients reconnect. Serve, its
  replicas and the Ray proxies keep running; `drain --undo` removes the selector.

The Helm release stays the source of truth: a later `helm upgrade` renders the values
again and replaces what these commands changed, so make a lasting change in the values too
(`helm upgrade --reuse-values --set-json pools.POOL.ab.share=0.1`).
"""
