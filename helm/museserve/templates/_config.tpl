{{/*
The two configs the chart renders from values:
- museserve.configFile: the museserve config file (platform/museserve/config/), byte for
  byte what the ConfigMap holds and the loader reads. `.Values.config` is passed through as
  it is; `.Values.pools` is a map (so `helm upgrade --reuse-values --set-json
  pools.NAME.ab.share=...` merges) and becomes the config's `pools` list, sorted by name,
  without the chart's own keys (workerGroup, autoscaling).
- museserve.serveConfig: Ray Serve's config (serveConfigV2): proxies, the one application
  and per-deployment options. Options mirror the museserve config (build_app sets the same
  from it) and add what only Ray knows: autoscaling and the custom resources that place
  gateways on gateway pods and each pool on its GPU worker group. A deployment whose
  museserve config sets `deployment.autoscaling` (museserve's own policies) gets neither
  num_replicas nor autoscaling_config here: build_app's stand.
*/}}

{{- define "museserve.configFile" -}}
{{- $pools := list }}
{{- range $name := keys .Values.pools | sortAlpha }}
{{- $pool := omit (index $.Values.pools $name) "workerGroup" "autoscaling" }}
{{- $pools = append $pools (merge (dict "name" $name) $pool) }}
{{- end }}
{{- $config := merge (dict "pools" $pools) (deepCopy .Values.config) }}
{{- printf "# Rendered by the museserve Helm chart (release %s); edit the release's values, not this file.\n%s\n" .Release.Name (toYaml $config) }}
{{- end }}

{{- define "museserve.configSha256" -}}
{{- include "museserve.configFile" . | sha256sum }}
{{- end }}

{{/* Serve deployment options; called with (dict "name" "deployment" "autoscaling" "resources"),
where "deployment" holds the museserve DeploymentConfig values and "maxOngoing" its default. */}}
{{- define "museserve.serveDeployment" -}}
{{- $d := .deployment | default dict }}
{{- $options := dict "name" .name }}
{{- if $d.autoscaling }}
{{- /* museserve's own policy (deployment.autoscaling): build_app sets num_replicas and
       autoscaling_config from the config file; setting either here would replace it. */}}
{{- else if .autoscaling }}
{{- $_ := set $options "num_replicas" "auto" }}
{{- $_ := set $options "autoscaling_config" .autoscaling }}
{{- else }}
{{- $_ := set $options "num_replicas" (int64 (default 1 $d.num_replicas)) }}
{{- end }}
{{- $_ := set $options "max_ongoing_requests" (int64 (default .maxOngoing $d.max_ongoing_requests)) }}
{{- $_ := set $options "max_queued_requests" (int64 (ternary 1024 $d.max_queued_requests (kindIs "invalid" $d.max_queued_requests))) }}
{{- $actor := dict "num_cpus" (float64 (default 0 $d.num_cpus)) "num_gpus" (float64 (default 0 $d.num_gpus)) "resources" .resources }}
{{- $_ := set $options "ray_actor_options" $actor }}
{{- toYaml (list $options) }}
{{- end }}

{{- define "museserve.serveConfig" -}}
{{- $server := .Values.config.server }}
{{- $deployments := list }}
{{- $gateway := include "museserve.serveDeployment" (dict "name" "gateway" "deployment" .Values.config.gateway.deployment "maxOngoing" 1024 "autoscaling" .Values.autoscaling.gateway "resources" (dict "museserve_gateway" 1)) | fromYamlArray }}
{{- $preprocess := include "museserve.serveDeployment" (dict "name" "preprocess" "deployment" .Values.config.preprocess.deployment "maxOngoing" 256 "autoscaling" .Values.autoscaling.preprocess "resources" (dict "museserve_preprocess" 1)) | fromYamlArray }}
{{- $deployments = concat $deployments $gateway $preprocess }}
{{- range $name := keys .Values.pools | sortAlpha }}
{{- $pool := index $.Values.pools $name }}
{{- $d := $pool.deployment | default dict }}
{{- /* A parallel pool's replica holds no GPU (its workers do): a token amount of the group
       resource still places the coordinator on a pod of its group, beside its workers. */}}
{{- $resources := dict (include "museserve.groupResource" $pool.workerGroup) (maxf 0.001 (float64 (default 0 $d.num_gpus))) }}
{{- $entry := include "museserve.serveDeployment" (dict "name" (printf "pool-%s" $name) "deployment" $d "maxOngoing" 128 "autoscaling" $pool.autoscaling "resources" $resources) | fromYamlArray }}
{{- $deployments = concat $deployments $entry }}
{{- end }}
{{- $args := dict "config" (include "museserve.configPath" .) "config_sha256" (include "museserve.configSha256" .) "config_wait_s" .Values.serve.configWaitSeconds }}
{{- $app := dict "name" (default "museserve" .Values.config.app_name) "import_path" "museserve.serve.entrypoint:app_builder" "route_prefix" "/" "args" $args "deployments" $deployments }}
{{- $grpc := dict "port" (int64 (default 50051 $server.grpc_port)) "grpc_servicer_functions" (list "museserve.serve.grpc_proxy.add_chat_service" "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server") "request_timeout_s" (float64 (default 600 $server.request_timeout_s)) }}
{{- $http := dict "host" (default "0.0.0.0" $server.http_host) "port" (int64 (default 8000 $server.http_port)) }}
{{- toYaml (dict "proxy_location" .Values.serve.proxyLocation "http_options" $http "grpc_options" $grpc "applications" (list $app)) }}
{{- end }}
