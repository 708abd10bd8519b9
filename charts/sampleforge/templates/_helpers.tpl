{{/*
Names and labels shared by every template. Kept in one place so that a selector can never drift
from the labels it selects.
*/}}

{{- define "sampleforge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource name prefix: "<release>-sampleforge", or the release name if it already says so. */}}
{{- define "sampleforge.fullname" -}}
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

{{- define "sampleforge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of the operator's pods. "component: operator" keeps run pods (which share
app.kubernetes.io/name=sampleforge) out of every operator selector. */}}
{{- define "sampleforge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sampleforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "sampleforge.labels" -}}
helm.sh/chart: {{ include "sampleforge.chart" . }}
{{ include "sampleforge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sampleforge
{{- end -}}

{{- define "sampleforge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sampleforge.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* "repository:tag" or "repository@digest"; the tag defaults to the chart's appVersion. */}}
{{- define "sampleforge.imageRef" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Name of the leader-election Lease (and of the Role that may renew only it). */}}
{{- define "sampleforge.leaseName" -}}
{{- include "sampleforge.fullname" . -}}
{{- end -}}

{{/* Label the leading replica puts on its own Pod; the heartbeat Service selects it. Must equal
LABEL_LEADER in api/constants.py (a unit test checks that). */}}
{{- define "sampleforge.leaderLabel" -}}
sampleforge.io/leader
{{- end -}}

{{/* The operator's Service: heartbeats from run pods land here, on the leader only. */}}
{{- define "sampleforge.heartbeatURL" -}}
{{- printf "http://%s.%s.svc:%d/v1alpha1/heartbeats" (include "sampleforge.fullname" .) .Release.Namespace (int .Values.service.port) -}}
{{- end -}}

{{/* Label of the metrics Service that the ServiceMonitor turns into the "job" label, so the alert
rules (a static file shared with promtool) can match job="sampleforge-operator" whatever the
release is called. */}}
{{- define "sampleforge.metricsJobLabel" -}}
sampleforge.io/metrics-job
{{- end -}}

{{/* operator.extraJobEnv as the operator reads it: "NAME=value,NAME=value", sorted by name. */}}
{{- define "sampleforge.extraJobEnv" -}}
{{- $pairs := list -}}
{{- range $name, $value := . -}}
{{- if or (contains "," (toString $value)) (contains "=" $name) -}}
{{- fail (printf "operator.extraJobEnv.%s: names may not contain '=' and values may not contain ','" $name) -}}
{{- end -}}
{{- $pairs = append $pairs (printf "%s=%s" $name (toString $value)) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
