{{/* The chart's name. */}}
{{- define "rkllm-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of object names: the release name, followed by the chart's name unless the
release name already contains it. With the release "rkllm-operator" the names match
config/default (kustomize). Helm allows dots in release names; object names such as a
Service's do not, so they become dashes. Helm also allows a digit first, which a Service's
name does not (a DNS-1035 label): such a release name comes after the chart's name. Not
truncated here: rkllm-operator.objectName fits the whole name into 63 characters.
*/}}
{{- define "rkllm-operator.fullname" -}}
{{- $full := "" }}
{{- if .Values.fullnameOverride }}
{{- $full = .Values.fullnameOverride }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if regexMatch "^[0-9]" .Release.Name }}
{{- $full = printf "%s-%s" $name .Release.Name }}
{{- else if contains $name .Release.Name }}
{{- $full = .Release.Name }}
{{- else }}
{{- $full = printf "%s-%s" .Release.Name $name }}
{{- end }}
{{- end }}
{{- $full | lower | replace "." "-" | trimSuffix "-" }}
{{- end }}

{{/*
The name of one object: "<fullname>-<suffix>", a DNS label (at most 63 characters, which
every kind accepts, Services included). A longer name keeps the start of the prefix and
the whole suffix, with 8 hex digits of the full name's SHA-256 between them, so long
release names that share a start still get different names. Call with
(list $ "suffix").
*/}}
{{- define "rkllm-operator.objectName" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 }}
{{- $full := include "rkllm-operator.fullname" $root }}
{{- $name := printf "%s-%s" $full $suffix }}
{{- if le (len $name) 63 }}
{{- $name }}
{{- else }}
{{- $keep := sub 63 (add (len $suffix) 10) | int }}
{{- printf "%s-%s-%s" ($full | trunc $keep | trimSuffix "-") (sha256sum $name | trunc 8) $suffix }}
{{- end }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "rkllm-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "rkllm-operator.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rkllm-operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of the manager's pods (immutable in a Deployment). */}}
{{- define "rkllm-operator.manager.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rkllm-operator.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
control-plane: controller-manager
{{- end }}

{{/* Selector labels of the device plugin's pods (immutable in a DaemonSet). */}}
{{- define "rkllm-operator.devicePlugin.selectorLabels" -}}
app.kubernetes.io/name: rknpu-device-plugin
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: device-plugin
{{- end }}

{{/* Names of the workloads (and their ServiceAccounts). */}}
{{- define "rkllm-operator.manager.name" -}}
{{ include "rkllm-operator.objectName" (list . "controller-manager") }}
{{- end }}
{{- define "rkllm-operator.devicePlugin.name" -}}
{{ include "rkllm-operator.objectName" (list . "device-plugin") }}
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
{{ include "rkllm-operator.objectName" (list . "gateway") }}
{{- end }}
{{- define "rkllm-operator.gateway.selectorLabels" -}}
app.kubernetes.io/name: rkllm-gateway
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: gateway
{{- end }}

{{/*
The Kubernetes versions the chart supports (docs/install.md, Requirements). Not
Chart.yaml's kubeVersion: Helm checks that against the version it renders for, and a
`helm template` without a cluster renders for a version compiled into helm (v1.20.0 in a
helm built with plain `go install`, and in programs that embed Helm's library), so every
such render failed. The check here refuses a version below the minimum when it came from
a cluster (discovery lists kinds, such as v1/Pod, which helm's built-in list does not) or
was given with --kube-version; only helm's own placeholder passes.
*/}}
{{- define "rkllm-operator.minKubeVersion" -}}1.30.0-0{{- end }}
{{- define "rkllm-operator.checkKubeVersion" -}}
{{- $v := .Capabilities.KubeVersion.Version }}
{{- $min := include "rkllm-operator.minKubeVersion" . }}
{{- $fromCluster := .Capabilities.APIVersions.Has "v1/Pod" }}
{{- if and (not (semverCompare (printf ">=%s" $min) $v)) (or $fromCluster (ne $v "v1.20.0")) }}
{{- fail (printf "rkllm-operator needs Kubernetes 1.30 or newer and this is %s: upgrade the cluster, or render for a newer version with helm template --kube-version" $v) }}
{{- end }}
{{- end }}

{{/*
Labels every model server the operator runs carries, its pods and its Service
(controllers.ServerLabels; the chart test keeps them equal).
*/}}
{{- define "rkllm-operator.modelServerLabels" -}}
app.kubernetes.io/name: rkllm-server
app.kubernetes.io/managed-by: rkllm-operator
{{- end }}
