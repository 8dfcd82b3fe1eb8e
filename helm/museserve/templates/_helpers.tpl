{{/*
Names, labels and the pieces every Ray pod shares. The museserve config and the Serve
config are built in _config.tpl; the checks that span several values are in _validate.tpl.
*/}}

{{- define "museserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name; short enough that "<fullname>-<suffix>" stays a valid DNS label. */}}
{{- define "museserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "museserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that never change over a release's life: safe in selectors. */}}
{{- define "museserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "museserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "museserve.labels" -}}
helm.sh/chart: {{ include "museserve.chart" . }}
{{ include "museserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: museserve
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Ray pods carry this label besides their component: the metrics Service and the
NetworkPolicies select every Ray pod of the release with it (the staging Redis has none). */}}
{{- define "museserve.rayNodeLabel" -}}
museserve.io/ray-node: "true"
{{- end }}

{{- define "museserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret that holds the Redis URL: the release's own with the staging Redis. */}}
{{- define "museserve.redisSecretName" -}}
{{- if .Values.redis.embedded.enabled }}
{{- printf "%s-redis" (include "museserve.fullname" .) }}
{{- else }}
{{- .Values.redis.existingSecret }}
{{- end }}
{{- end }}

{{/* Whether the cluster serves prometheus-operator's API: without it a ServiceMonitor or
PrometheusRule would fail the whole install, so they are left out (NOTES says so). */}}
{{- define "museserve.prometheusOperator" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{- end }}
{{- end }}

{{- define "museserve.redisEnabled" -}}
{{- if or .Values.redis.embedded.enabled .Values.redis.existingSecret }}true{{- end }}
{{- end }}

{{/* The Ray custom resource a worker group advertises (one unit per GPU; one per pod of a
CPU group) and its pools request: it pins each pool to its group. Ray resource names take no "-". */}}
{{- define "museserve.groupResource" -}}
{{- printf "museserve_group_%s" (. | replace "-" "_") }}
{{- end }}

{{/* The CPUs Ray counts on a pod, from the container resources it is called with: KubeRay
passes the CPU limit, else the request, rounded up, as `ray start --num-cpus`. Empty when
neither is set (Ray then counts the node's cores). */}}
{{- define "museserve.rayCpus" -}}
{{- $resources := . | default dict }}
{{- $cpu := ($resources.limits | default dict).cpu | default ($resources.requests | default dict).cpu }}
{{- with $cpu }}
{{- $quantity := toString . }}
{{- if hasSuffix "m" $quantity }}
{{- ceil (divf (trimSuffix "m" $quantity | float64) 1000) }}
{{- else }}
{{- ceil (float64 $quantity) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "museserve.configMountPath" -}}/etc/museserve/config{{- end }}
{{- define "museserve.configPath" -}}/etc/museserve/config/museserve.yaml{{- end }}
{{- define "museserve.apiKeysPath" -}}/etc/museserve/api-keys/api-keys.yaml{{- end }}

{{/* Environment of every Ray container. Serve replicas and proxies are children of the
raylet, so they see it: the museserve variables (read_environment) and the settings
ray_process_environment() lists for Ray's own processes. */}}
{{- define "museserve.rayEnv" -}}
- name: MUSESERVE_CONFIG
  value: {{ include "museserve.configPath" . }}
- name: MUSESERVE_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- if include "museserve.redisEnabled" . }}
- name: MUSESERVE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "museserve.redisSecretName" . }}
      key: {{ .Values.redis.secretKey }}
{{- end }}
{{- if .Values.apiKeys.existingSecret }}
- name: MUSESERVE_API_KEYS_FILE
  value: {{ include "museserve.apiKeysPath" . }}
{{- end }}
{{- $size := int64 (default 67108864 .Values.config.server.max_request_bytes) }}
- name: RAY_SERVE_GRPC_MAX_MESSAGE_SIZE
  value: {{ $size | quote }}
- name: RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH
  value: {{ $size | quote }}
# The gateway's own gRPC server and drain stand in for Ray's per-replica ingress servers.
- name: RAY_SERVE_ENABLE_DIRECT_INGRESS
  value: "0"
{{- if ne (toString .Values.config.server.throughput_optimized) "false" }}
- name: RAY_SERVE_THROUGHPUT_OPTIMIZED
  value: "1"
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "museserve.rayVolumeMounts" -}}
- name: museserve-config
  mountPath: {{ include "museserve.configMountPath" . }}
  readOnly: true
{{- if .Values.apiKeys.existingSecret }}
- name: api-keys
  mountPath: {{ dir (include "museserve.apiKeysPath" .) }}
  readOnly: true
{{- end }}
- name: dshm
  mountPath: /dev/shm
{{- end }}

{{/* Directory mounts, never subPath: the kubelet then refreshes the file on upgrade, and
the Serve app builder waits for the digest the new serveConfigV2 names. */}}
{{/* Called with (dict "root" $ "shmSize" <quantity>): /dev/shm backs Ray's object store. */}}
{{- define "museserve.rayVolumes" -}}
{{- $root := .root }}
- name: museserve-config
  configMap:
    name: {{ include "museserve.fullname" $root }}-config
{{- if $root.Values.apiKeys.existingSecret }}
- name: api-keys
  secret:
    secretName: {{ $root.Values.apiKeys.existingSecret }}
    items:
      - key: {{ $root.Values.apiKeys.secretKey }}
        path: {{ base (include "museserve.apiKeysPath" $root) }}
{{- end }}
- name: dshm
  emptyDir:
    medium: Memory
    {{- with .shmSize }}
    sizeLimit: {{ . }}
    {{- end }}
{{- end }}

{{- define "museserve.podSpecCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The Ray container of a group; called with (dict "root" $ "name" "ray-head" "resources"
{...} "ports" [...] "readinessProbe" {...}). Probes left unset are injected by KubeRay
(raylet and dashboard-agent health), which is what its controllers expect. */}}
{{- define "museserve.rayContainer" -}}
{{- $root := .root }}
- name: {{ .name }}
  image: {{ include "museserve.image" $root }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  env:
    {{- include "museserve.rayEnv" $root | nindent 4 }}
  ports:
    {{- toYaml .ports | nindent 4 }}
  {{- with .resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .readinessProbe }}
  readinessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    {{- include "museserve.rayVolumeMounts" $root | nindent 4 }}
    {{- if $root.Values.modelVolume }}
    - name: models
      mountPath: {{ $root.Values.modelMountPath }}
      readOnly: true
    {{- end }}
{{- end }}

{{/* Volumes of a Ray pod; called with (dict "root" $ "shmSize" <quantity>). */}}
{{- define "museserve.rayPodVolumes" -}}
{{- include "museserve.rayVolumes" . }}
{{- with .root.Values.modelVolume }}
- name: models
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Scheduling of a group's pods; called with the group's values. */}}
{{- define "museserve.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{/* rayStartParams "resources": KubeRay passes it to `ray start --resources=...` through a
shell, so the JSON goes in as one double-quoted string. */}}
{{- define "museserve.rayResourcesParam" -}}
{{- printf "%q" (toJson .) | squote }}
{{- end }}
