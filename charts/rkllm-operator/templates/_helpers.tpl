{{/* The chart's name. */}}
{{- define "rkllm-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of object names: the release name, followed by the chart's name unless the
release name already contains it. With the release "rkllm-operator" the names match
config/default (kustomize).
*/}}
{{- define "rkllm-operator.fullname" -}}
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

{{/* Labels of every object. */}}
{{- define "rkllm-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "rkllm-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rkllm-operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of the manager's pods (immutable in a Deployment). */}}
{{- define "rkllm-operator.manager.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rkllm-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
control-plane: controller-manager
{{- end }}

{{/* Selector labels of the device plugin's pods (immutable in a DaemonSet). */}}
{{- define "rkllm-operator.devicePlugin.selectorLabels" -}}
app.kubernetes.io/name: rknpu-device-plugin
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: device-plugin
{{- end }}

{{/* Names. */}}
{{- define "rkllm-operator.manager.name" -}}
{{ include "rkllm-operator.fullname" . }}-controller-manager
{{- end }}
{{- define "rkllm-operator.devicePlugin.name" -}}
{{ include "rkllm-operator.fullname" . }}-device-plugin
{{- end }}

{{/*
An image reference from {repository, tag, digest}: the digest wins, the tag defaults to
the chart's appVersion. Call with (dict "image" .Values.x.image "root" $).
*/}}
{{/*
The device plugin's namespace: devicePlugin.namespace, or the release's. Its pods need
hostPath volumes, so Pod Security must allow privileged there.
*/}}
{{- define "rkllm-operator.devicePlugin.namespace" -}}
{{- default .Release.Namespace .Values.devicePlugin.namespace }}
{{- end }}

{{- define "rkllm-operator.image" -}}
{{- if .image.digest -}}
{{ .image.repository }}@{{ .image.digest }}
{{- else -}}
{{ .image.repository }}:{{ default .root.Chart.AppVersion .image.tag }}
{{- end -}}
{{- end }}

{{/* The gateway's name and the selector labels of its pods (immutable in a Deployment). */}}
{{- define "rkllm-operator.gateway.name" -}}
{{ include "rkllm-operator.fullname" . }}-gateway
{{- end }}
{{- define "rkllm-operator.gateway.selectorLabels" -}}
app.kubernetes.io/name: rkllm-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}
