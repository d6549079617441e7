{{/* Names, labels and the pieces every workload shares. */}}

{{- define "autopilot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "autopilot.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The name of one part: (dict "root" $ "part" "worker"). */}}
{{- define "autopilot.partName" -}}
{{- printf "%s-%s" (include "autopilot.fullname" .root | trunc 50 | trimSuffix "-") .part -}}
{{- end -}}

{{- define "autopilot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "autopilot.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .part }}
{{- end -}}

{{- define "autopilot.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "autopilot.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: autopilot
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "autopilot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "autopilot.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* image: (dict "root" $ "image" .Values.controlPlane.image) */}}
{{- define "autopilot.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/*
The pod security context of every pod but the DinD one: uid/gid 10001 as in the images
(docker/README.md), RuntimeDefault seccomp.
*/}}
{{- define "autopilot.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid | default 10001 }}
runAsGroup: {{ .uid | default 10001 }}
fsGroup: {{ .uid | default 10001 }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The container security context of every container but the run-engine sidecars. */}}
{{- define "autopilot.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The Secret holding AUTOPILOT_SECRET_KEY and AUTOPILOT_ADMIN_TOKEN. */}}
{{- define "autopilot.appSecretName" -}}
{{- default (include "autopilot.partName" (dict "root" . "part" "secrets")) .Values.secrets.existingSecret -}}
{{- end -}}

{{/*
AUTOPILOT_DATABASE_URL as EnvVars. The bundled server's URL is put together in the pod from the
password's Secret (Kubernetes expands $(PGPASSWORD)), so no URL with a password is rendered.
*/}}
{{- define "autopilot.databaseEnv" -}}
{{- if .Values.postgresql.enabled -}}
{{- $pg := .Values.postgresql -}}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ default (include "autopilot.partName" (dict "root" . "part" "postgresql")) $pg.existingSecret }}
      key: password
- name: AUTOPILOT_DATABASE_URL
  value: {{ printf "postgres://%s:$(PGPASSWORD)@%s:5432/%s" $pg.username (include "autopilot.partName" (dict "root" . "part" "postgresql")) $pg.database | quote }}
{{- else if .Values.externalDatabase.existingSecret -}}
- name: AUTOPILOT_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalDatabase.existingSecret }}
      key: {{ .Values.externalDatabase.existingSecretKey }}
{{- else if .Values.externalDatabase.url -}}
- name: AUTOPILOT_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "autopilot.partName" (dict "root" . "part" "external") }}
      key: database-url
{{- else -}}
{{- fail "set postgresql.enabled, externalDatabase.existingSecret or externalDatabase.url: control planes need PostgreSQL in the fleet" -}}
{{- end -}}
{{- end -}}

{{/* AUTOPILOT_NATS_URL as an EnvVar. */}}
{{- define "autopilot.natsUrlEnv" -}}
- name: AUTOPILOT_NATS_URL
{{- if .Values.nats.enabled }}
  value: {{ printf "nats://%s:4222" (include "autopilot.partName" (dict "root" . "part" "nats")) | quote }}
{{- else if .Values.externalNats.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalNats.existingSecret }}
      key: {{ .Values.externalNats.existingSecretKey }}
{{- else if .Values.externalNats.url }}
  value: {{ .Values.externalNats.url | quote }}
{{- else }}
{{- fail "set nats.enabled, externalNats.url or externalNats.existingSecret: the fleet needs NATS JetStream" }}
{{- end }}
- name: AUTOPILOT_NATS_PREFIX
  value: {{ .Values.config.natsPrefix | quote }}
{{- end -}}

{{/* OTEL_* pass-through: (dict "root" $ "serviceName" "autopilot"). */}}
{{- define "autopilot.otelEnv" -}}
{{- $otel := .root.Values.otel -}}
- name: OTEL_SERVICE_NAME
  value: {{ default .serviceName $otel.serviceName | quote }}
{{- with $otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $otel.protocol | quote }}
- name: OTEL_METRICS_EXPORTER
  value: {{ ternary "otlp" "none" $otel.pushMetrics | quote }}
{{- end }}
{{- if $otel.headers.existingSecret }}
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ $otel.headers.existingSecret }}
      key: {{ $otel.headers.key }}
{{- end }}
{{- with $otel.tracesSampler }}
- name: OTEL_TRACES_SAMPLER
  value: {{ . | quote }}
{{- end }}
{{- with $otel.tracesSamplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- with $otel.resourceAttributes }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* Rendered when the value is true, or "auto" and the cluster serves the API group. */}}
{{- define "autopilot.monitoringEnabled" -}}
{{- if or (eq (toString .enabled) "true") (and (eq (toString .enabled) "auto") (.root.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) -}}
true
{{- end -}}
{{- end -}}

{{/* The worker pod's termination grace: the shutdown grace plus the margin. */}}
{{- define "autopilot.workerTerminationGrace" -}}
{{- add .Values.worker.shutdownGraceSecs .Values.worker.terminationGraceMarginSecs -}}
{{- end -}}

{{/* The NATS monitoring endpoint KEDA reads. */}}
{{- define "autopilot.natsMonitoringEndpoint" -}}
{{- if .Values.nats.enabled -}}
{{- printf "%s.%s.svc:8222" (include "autopilot.partName" (dict "root" . "part" "nats")) .Release.Namespace -}}
{{- else if .Values.externalNats.monitoringEndpoint -}}
{{- .Values.externalNats.monitoringEndpoint -}}
{{- else -}}
{{- fail "keda.enabled needs the NATS monitoring endpoint: set externalNats.monitoringEndpoint (HOST:8222)" -}}
{{- end -}}
{{- end -}}

{{/* Egress to NATS: the bundled server's pods, or the external peers. */}}
{{- define "autopilot.natsEgress" -}}
{{- if .Values.nats.enabled -}}
- to:
    - podSelector:
        matchLabels:
          {{- include "autopilot.selectorLabels" (dict "root" . "part" "nats") | nindent 10 }}
  ports:
    - port: 4222
      protocol: TCP
{{- else -}}
- {{- with .Values.networkPolicy.externalNats.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    {{- toYaml .Values.networkPolicy.externalNats.ports | nindent 4 }}
{{- end -}}
{{- end -}}

{{/* Egress to the OTLP endpoint, when one is set. */}}
{{- define "autopilot.otlpEgress" -}}
{{- if .Values.otel.endpoint -}}
- {{- with .Values.networkPolicy.otlp.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    {{- toYaml .Values.networkPolicy.otlp.ports | nindent 4 }}
{{- end -}}
{{- end -}}
