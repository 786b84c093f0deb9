{{/* Names ------------------------------------------------------------------------------- */}}

{{- define "aisle.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<chart>" (or just the release when it already contains the chart name), cut
short enough that "-worker-<name>" suffixes stay within 63 characters. */}}
{{- define "aisle.fullname" -}}
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

{{- define "aisle.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aisle.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "aisle.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "aisle.configSecret" -}}
{{- printf "%s-config" (include "aisle.fullname" .) }}
{{- end }}

{{- define "aisle.tritonService" -}}
{{- printf "%s-triton" (include "aisle.fullname" .) }}
{{- end }}

{{/* host:port of Triton's gRPC endpoint, for AISLE_TRITON_URL. */}}
{{- define "aisle.tritonUrl" -}}
{{- $svc := include "aisle.tritonService" . }}
{{- if eq .Values.triton.clientLoadBalancing "headless" }}
{{- $svc = printf "%s-headless" $svc }}
{{- end }}
{{- printf "%s:%d" $svc (int .Values.triton.ports.grpc) }}
{{- end }}

{{/* Labels ------------------------------------------------------------------------------ */}}

{{- define "aisle.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aisle.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "aisle.labels" -}}
helm.sh/chart: {{ include "aisle.chart" . }}
{{ include "aisle.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aisle
{{- end }}

{{/* Labels of one component: (dict "ctx" $ "component" "gateway"). */}}
{{- define "aisle.componentLabels" -}}
{{ include "aisle.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "aisle.componentSelector" -}}
{{ include "aisle.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Pod label of the pods the Triton NetworkPolicy lets in. */}}
{{- define "aisle.tritonClientLabel" -}}
aisle.io/triton-client: "true"
{{- end }}

{{/* Images ------------------------------------------------------------------------------ */}}

{{- define "aisle.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Configuration ----------------------------------------------------------------------- */}}

{{/* The Secret and key holding one URL: (dict "ctx" $ "service" .Values.postgres "key" "database-url"). */}}
{{- define "aisle.secretRef" -}}
{{- if .service.existingSecret.name }}
name: {{ .service.existingSecret.name }}
key: {{ .service.existingSecret.key }}
{{- else }}
name: {{ include "aisle.configSecret" .ctx }}
key: {{ .key }}
{{- end }}
{{- end }}

{{/* Fails the render with a message naming the values to set. */}}
{{- define "aisle.validate" -}}
{{- if and (not .Values.postgres.existingSecret.name) (not .Values.postgres.url) }}
{{- fail "postgres: set postgres.url or postgres.existingSecret.name (a Secret with the postgresql:// URL)" }}
{{- end }}
{{- if and (not .Values.redis.existingSecret.name) (not .Values.redis.url) }}
{{- fail "redis: set redis.url or redis.existingSecret.name (a Secret with the redis:// URL)" }}
{{- end }}
{{- if and .Values.apiKeys.enabled (not .Values.apiKeys.existingSecret.name) (not .Values.apiKeys.keys) }}
{{- fail "apiKeys.enabled is true: set apiKeys.existingSecret.name or at least one key in apiKeys.keys" }}
{{- end }}
{{- $repo := .Values.triton.modelRepository }}
{{- if and (eq $repo.source "pvc") (not $repo.pvc.claimName) }}
{{- fail "triton.modelRepository.source is pvc: set triton.modelRepository.pvc.claimName" }}
{{- end }}
{{- if and (eq $repo.source "objectStorage") (not $repo.objectStorage.remote) }}
{{- fail "triton.modelRepository.source is objectStorage: set triton.modelRepository.objectStorage.remote" }}
{{- end }}
{{- end }}

{{/* AISLE_* environment shared by every aisle container. */}}
{{- define "aisle.env" -}}
- name: AISLE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- include "aisle.secretRef" (dict "ctx" . "service" .Values.postgres "key" "database-url") | trim | nindent 6 }}
- name: AISLE_REDIS_URL
  valueFrom:
    secretKeyRef:
      {{- include "aisle.secretRef" (dict "ctx" . "service" .Values.redis "key" "redis-url") | trim | nindent 6 }}
- name: AISLE_TRITON_URL
  value: {{ include "aisle.tritonUrl" . | quote }}
- name: AISLE_TRITON_TIMEOUT_S
  value: {{ .Values.app.tritonTimeoutSeconds | toString | quote }}
- name: AISLE_RECOMMEND_CACHE_TTL_S
  value: {{ .Values.app.recommendCacheTtlSeconds | toString | quote }}
- name: AISLE_RECOMMEND_WARM_INTERVAL_S
  value: {{ .Values.app.recommendWarmIntervalSeconds | toString | quote }}
- name: AISLE_EMBEDDING_MODEL
  value: {{ .Values.app.embeddingModel | quote }}
- name: AISLE_LOG_FORMAT
  value: {{ .Values.app.logFormat | quote }}
{{- with .Values.app.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Where the workers, beat and the refresh job reach the gateway: they warm its
recommendation cache by calling Recommend (workers/jobs/recommendations.py), with an API key
when keys are on. */}}
{{- define "aisle.gatewayAddressEnv" -}}
- name: AISLE_GATEWAY_ADDRESS
  value: {{ printf "%s-gateway:%v" (include "aisle.fullname" .) .Values.gateway.port | quote }}
{{- end }}

{{/* ... and the key they call it with (beat only schedules the warm-ups: it gets the address). */}}
{{- define "aisle.gatewayClientEnv" -}}
{{ include "aisle.gatewayAddressEnv" . }}
{{- if .Values.apiKeys.enabled }}
- name: AISLE_API_KEYS
  valueFrom:
    secretKeyRef:
      {{- include "aisle.secretRef" (dict "ctx" . "service" .Values.apiKeys "key" "api-keys") | trim | nindent 6 }}
{{- end }}
{{- end }}

{{/* Checksum of the chart-owned configuration: a change rolls the pods that read it. */}}
{{- define "aisle.configChecksum" -}}
{{- $cfg := dict "postgres" .Values.postgres "redis" .Values.redis "apiKeys" .Values.apiKeys "app" .Values.app }}
{{- toJson $cfg | sha256sum }}
{{- end }}

{{/* Pod-level pieces -------------------------------------------------------------------- */}}

{{- define "aisle.podCommon" -}}
serviceAccountName: {{ include "aisle.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* nodeSelector/tolerations/affinity of one component's values. */}}
{{- define "aisle.scheduling" -}}
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
{{- end }}

{{/* The writable /tmp every aisle container gets (the root filesystem is read-only). */}}
{{- define "aisle.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.app.tmpSizeLimit }}
{{- end }}

{{- define "aisle.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}
