{{/*
Checks that span several values, which values.schema.json cannot express. Each failure
names the values key to fix. The museserve config's own rules (pool references, tiers,
engine limits) are checked by its loader, in CI (tests/deploy) and by `museserve config check`.
*/}}
{{- define "museserve.validate" -}}
{{- $server := .Values.config.server }}
{{- if not $server.direct_grpc_port }}
{{- fail "config.server.direct_grpc_port must be set: the gateway Service and its grpc readiness probe use the direct port" }}
{{- end }}
{{- if not (has (toString $server.direct_grpc_host) (list "0.0.0.0" "::" "[::]")) }}
{{- fail (printf "config.server.direct_grpc_host is %v: in a cluster it must bind all interfaces (0.0.0.0 or [::])" $server.direct_grpc_host) }}
{{- end }}
{{- if not (has (toString $server.http_host) (list "0.0.0.0" "::" "[::]")) }}
{{- fail (printf "config.server.http_host is %v: in a cluster it must bind all interfaces (0.0.0.0)" $server.http_host) }}
{{- end }}
{{- if and .Values.redis.embedded.enabled .Values.redis.existingSecret }}
{{- fail "redis: set either redis.existingSecret (external Redis) or redis.embedded.enabled (staging), not both" }}
{{- end }}
{{- $gateway := .Values.config.gateway }}
{{- if and (gt (len .Values.pools) 1) (not $gateway.default_model) }}
{{- fail "config.gateway.default_model must name a pool when there are several (pools are a map: no first one)" }}
{{- end }}
{{- /* The chart's defaults route to the chart's default pools: a values file that drops those
       pools but keeps these keys would otherwise start a cell whose loader refuses its config. */}}
{{- $served := keys .Values.pools | sortAlpha | join ", " }}
{{- with $gateway.default_model }}
{{- if not (hasKey $.Values.pools .) }}
{{- fail (printf "config.gateway.default_model %q is not a key of pools (%s)" . $served) }}
{{- end }}
{{- end }}
{{- range $mode, $target := $gateway.routes | default dict }}
{{- if not (hasKey $.Values.pools (toString $target)) }}
{{- fail (printf "config.gateway.routes.%s %q is not a key of pools (%s); set it to null to drop a chart default" $mode $target $served) }}
{{- end }}
{{- end }}
{{- range $name, $pool := .Values.pools }}
{{- $group := index $.Values.rayCluster.workerGroups $pool.workerGroup }}
{{- if not $group }}
{{- fail (printf "pools.%s.workerGroup %q is not a key of rayCluster.workerGroups" $name $pool.workerGroup) }}
{{- end }}
{{- $groupGpus := int64 (default 0 $group.gpusPerPod) }}
{{- $d := $pool.deployment | default dict }}
{{- $gpus := float64 (default 0 $d.num_gpus) }}
{{- $cpus := float64 (default 0 $d.num_cpus) }}
{{- $parallel := $pool.parallel | default dict }}
{{- $tensor := int64 (default 1 $parallel.tensor) }}
{{- $world := mul $tensor (int64 (default 1 $parallel.pipeline)) }}
{{- $podCpus := include "museserve.rayCpus" $group.resources }}
{{- if and $podCpus (gt $cpus (float64 $podCpus)) }}
{{- fail (printf "pools.%s.deployment.num_cpus %v exceeds the %s CPUs Ray counts on a rayCluster.workerGroups.%s pod (its cpu limit, else request)" $name $cpus $podCpus $pool.workerGroup) }}
{{- end }}
{{- /* How much of one pod a replica takes, for the autoscaling bound: GPUs on a GPU group,
       CPUs on a CPU group (0: not bounded by the chart). */}}
{{- $perPod := float64 $groupGpus }}
{{- $perReplica := $gpus }}
{{- if eq $groupGpus 0 }}
{{- /* A CPU group: replicas share its pods by Ray CPUs. Parallel workers are placed by their
       GPUs (one each), which a CPU group has none of. */}}
{{- if gt $world 1 }}
{{- fail (printf "pools.%s.parallel: rayCluster.workerGroups.%s has no GPUs (gpusPerPod 0); parallel workers take one GPU each" $name $pool.workerGroup) }}
{{- end }}
{{- if ne $gpus 0.0 }}
{{- fail (printf "pools.%s.deployment.num_gpus is %v: rayCluster.workerGroups.%s has no GPUs (gpusPerPod 0); set it to 0" $name $gpus $pool.workerGroup) }}
{{- end }}
{{- $perPod = float64 (default "0" $podCpus) }}
{{- $perReplica = $cpus }}
{{- else if gt $world 1 }}
{{- /* Parallel pools: the replica coordinates; each worker actor takes one GPU, and the
       `tensor` workers of a stage are packed onto one pod (STRICT_PACK). */}}
{{- if ne $gpus 0.0 }}
{{- fail (printf "pools.%s: with parallel workers the replica holds no GPU (its %d workers take one each): set deployment.num_gpus to 0" $name $world) }}
{{- end }}
{{- if gt $tensor $groupGpus }}
{{- fail (printf "pools.%s.parallel.tensor %d exceeds rayCluster.workerGroups.%s.gpusPerPod (%v): a stage's workers share one pod" $name $tensor $pool.workerGroup $group.gpusPerPod) }}
{{- end }}
{{- $perReplica = float64 $world }}
{{- else if or (le $gpus 0.0) (gt $gpus (float64 $groupGpus)) }}
{{- fail (printf "pools.%s.deployment.num_gpus is %v: a pool replica needs between 0 (exclusive) and rayCluster.workerGroups.%s.gpusPerPod (%v) GPUs" $name $gpus $pool.workerGroup $group.gpusPerPod) }}
{{- end }}
{{- with $pool.autoscaling }}
{{- if and (gt $perPod 0.0) (gt $perReplica 0.0) }}
{{- $reachable := floor (divf (mulf $perPod (float64 $group.maxReplicas)) $perReplica) }}
{{- if gt (float64 .max_replicas) $reachable }}
{{- fail (printf "pools.%s.autoscaling.max_replicas %v exceeds what rayCluster.workerGroups.%s can hold (%v replicas)" $name .max_replicas $pool.workerGroup $reachable) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
