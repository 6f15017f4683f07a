{{/* Names and labels shared by the templates. */}}

{{- define "jellybean.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/* <release>-jellybean, or <release> when it already holds the chart's name; at most 40 characters
so that derived names (…-ray-head-svc, …-dashboard-…) stay valid. */}}
{{- define "jellybean.fullname" -}}
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

{{- define "jellybean.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "jellybean.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jellybean.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "jellybean.labels" -}}
helm.sh/chart: {{ include "jellybean.chart" . }}
{{ include "jellybean.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: jellybean
{{- end }}

{{- define "jellybean.operatorSelectorLabels" -}}
{{ include "jellybean.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The labels every Ray pod of the release carries (raycluster.yaml), selected by its NetworkPolicy. */}}
{{- define "jellybean.rayPodSelectorLabels" -}}
app.kubernetes.io/part-of: jellybean
app.kubernetes.io/component: ray
jellybean.io/release: {{ .Release.Name }}
{{- end }}

{{- define "jellybean.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "jellybean.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "jellybean.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "jellybean.rayImage" -}}
{{- printf "%s:%s" .Values.ray.image.repository (default .Chart.AppVersion .Values.ray.image.tag) }}
{{- end }}

{{- define "jellybean.tokenSecretName" -}}
{{- default (printf "%s-token" (include "jellybean.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "jellybean.rayClusterName" -}}
{{- printf "%s-ray" (include "jellybean.fullname" .) }}
{{- end }}

{{- define "jellybean.rayAuthSecretName" -}}
{{- default (printf "%s-ray-auth" (include "jellybean.fullname" .)) .Values.ray.auth.existingSecret }}
{{- end }}

{{/* The Ray cluster the operator joins: Ray Client on the KubeRay head service (the operator's pod is
not a Ray node, so it connects as a client). */}}
{{- define "jellybean.rayAddress" -}}
{{- if .Values.ray.address }}
{{- .Values.ray.address }}
{{- else if .Values.ray.create }}
{{- printf "ray://%s-head-svc.%s.svc:10001" (include "jellybean.rayClusterName" .) .Release.Namespace }}
{{- else }}
{{- fail "ray.address is required when ray.create is false" }}
{{- end }}
{{- end }}

{{/* A Secret value that survives upgrades: the one already in the cluster (lookup), else a new
random one. Arguments: (list $ context secretName key length). */}}
{{- define "jellybean.persistentSecretValue" -}}
{{- $ctx := index . 0 }}
{{- $name := index . 1 }}
{{- $key := index . 2 }}
{{- $length := index . 3 }}
{{- $existing := lookup "v1" "Secret" $ctx.Release.Namespace $name }}
{{- if and $existing $existing.data (hasKey $existing.data $key) }}
{{- index $existing.data $key }}
{{- else }}
{{- randAlphaNum $length | b64enc }}
{{- end }}
{{- end }}

{{/* The security context of every container the chart runs. */}}
{{- define "jellybean.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Whether the operator authenticates to Ray with a token: the chart's RayCluster with auth on, or an
existing cluster whose token Secret is named. */}}
{{- define "jellybean.rayAuth" -}}
{{- if and .Values.ray.auth.enabled (or .Values.ray.create .Values.ray.auth.existingSecret) }}true{{ end }}
{{- end }}

{{/* The one namespace the operator watches: operator.watchNamespace, by default the release's. */}}
{{- define "jellybean.watchNamespace" -}}
{{- default .Release.Namespace .Values.operator.watchNamespace }}
{{- end }}
