{{/*
Names and labels shared by every template. Kubernetes names are limited to 63 characters
(DNS-1123 label), so every name is truncated there and a trailing "-" trimmed.
*/}}

{{/* Chart name, or nameOverride. */}}
{{- define "paddle-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: fullnameOverride, else "<release>-<chart>", or just the release name
when it already contains the chart name (so `helm install paddle-operator ...` is not doubled).
*/}}
{{- define "paddle-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<chart>-<version>" for the helm.sh/chart label (never in selectors: it changes on upgrade). */}}
{{- define "paddle-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable for the life of a release. */}}
{{- define "paddle-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "paddle-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Common labels for every object. */}}
{{- define "paddle-operator.labels" -}}
helm.sh/chart: {{ include "paddle-operator.chart" . }}
{{ include "paddle-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: paddle-sla-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* ServiceAccount the operator runs as. */}}
{{- define "paddle-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "paddle-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Operator image reference; a digest wins over the tag. */}}
{{- define "paddle-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Namespaces the operator watches and is granted access to. Empty list: the whole cluster.
Rendered as JSON so templates can `fromJsonArray` it; duplicates removed.
*/}}
{{- define "paddle-operator.watchNamespaces" -}}
{{- .Values.watchNamespaces | uniq | toJson }}
{{- end }}

{{/* Name of the prometheus-adapter rules ConfigMap. */}}
{{- define "paddle-operator.adapterRulesName" -}}
{{- default (printf "%s-adapter-rules" (include "paddle-operator.fullname" . | trunc 49 | trimSuffix "-")) .Values.prometheusAdapter.rules.configMapName }}
{{- end }}

{{/* Name of the runtimes' ServiceMonitor. */}}
{{- define "paddle-operator.serviceMonitorName" -}}
{{- printf "%s-runtimes" (include "paddle-operator.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}
