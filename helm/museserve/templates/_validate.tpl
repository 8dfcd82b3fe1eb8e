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
{{- if and (gt (len .Values.pools) 1) (not .Values.config.gateway.default_model) }}
{{- fail "config.gateway.default_model must name a pool when there are several (pools are a map: no first one)" }}
{{- end }}
{{- range $name, $pool := .Values.pools }}
{{- $group := index $.Values.rayCluster.workerGroups $pool.workerGroup }}
{{- if not $group }}
{{- fail (printf "pools.%s.workerGroup %q is not a key of rayCluster.workerGroups" $name $pool.workerGroup) }}
{{- end }}
{{- $d := $pool.deployment | default dict }}
{{- $gpus := float64 (default 0 $d.num_gpus) }}
{{- $parallel := $pool.parallel | default dict }}
{{- $tensor := int64 (default 1 $parallel.tensor) }}
{{- $world := mul $tensor (int64 (default 1 $parallel.pipeline)) }}
{{- $gpusPerReplica := $gpus }}
{{- if gt $world 1 }}
{{- /* Parallel pools: the replica coordinates; each worker actor takes one GPU, and the
       `tensor` workers of a stage are packed onto one pod (STRICT_PACK). */}}
{{- if ne $gpus 0.0 }}
{{- fail (printf "pools.%s: with parallel workers the replica holds no GPU (its %d workers take one each): set deployment.num_gpus to 0" $name $world) }}
{{- end }}
{{- if gt $tensor (int64 $group.gpusPerPod) }}
{{- fail (printf "pools.%s.parallel.tensor %d exceeds rayCluster.workerGroups.%s.gpusPerPod (%v): a stage's workers share one pod" $name $tensor $pool.workerGroup $group.gpusPerPod) }}
{{- end }}
{{- $gpusPerReplica = float64 $world }}
{{- else if or (le $gpus 0.0) (gt $gpus (float64 $group.gpusPerPod)) }}
{{- fail (printf "pools.%s.deployment.num_gpus is %v: a pool replica needs between 0 (exclusive) and rayCluster.workerGroups.%s.gpusPerPod (%v) GPUs" $name $gpus $pool.workerGroup $group.gpusPerPod) }}
{{- end }}
{{- with $pool.autoscaling }}
{{- $reachable := floor (divf (mulf (float64 $group.gpusPerPod) (float64 $group.maxReplicas)) $gpusPerReplica) }}
{{- if gt (float64 .max_replicas) $reachable }}
{{- fail (printf "pools.%s.autoscaling.max_replicas %v exceeds what rayCluster.workerGroups.%s can hold (%v replicas)" $name .max_replicas $pool.workerGroup $reachable) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
