{{/* Chart name, truncated to 63 characters (a label value / DNS label). */}}
{{- define "tgi-pool.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: RELEASE-CHART, or RELEASE when it already contains the chart name; truncated to 63.
Names that get a suffix (e.g. -watch, -leader) are cut shorter so that name+suffix still fits.
*/}}
{{- define "tgi-pool.fullname" -}}
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

{{/* "tgi-pool.suffixed" (list . "suffix"): fullname-suffix within 63 characters. */}}
{{- define "tgi-pool.suffixed" -}}
{{- $ctx := index . 0 }}
{{- $suffix := index . 1 }}
{{- $base := include "tgi-pool.fullname" $ctx | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $base $suffix }}
{{- end }}

{{- define "tgi-pool.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "tgi-pool.labels" -}}
helm.sh/chart: {{ include "tgi-pool.chart" . }}
{{ include "tgi-pool.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tgipool
{{- end }}

{{/* Labels that select the operator pod (immutable in a Deployment: never add to these). */}}
{{- define "tgi-pool.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tgi-pool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "tgi-pool.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tgi-pool.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tgi-pool.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "tgi-pool.peeringName" -}}
{{- default (include "tgi-pool.fullname" .) .Values.peering.name }}
{{- end }}

{{/*
The RBAC rules of the operator: exactly the resources and verbs it calls, derived by running it with
only these grants (tests/e2e/test_helm.py removes verbs one at a time and shows it then fails). No
wildcard, no escalate/bind/impersonate.
- modelpools, modelgateways: kopf lists and watches them and patches its annotations and finalizer
  onto them; the operator patches their status subresource. `get`: the gateway's Role grants get on
  both, and RBAC only lets the operator grant what it holds itself.
- pool children (Service, PVC, weight-fetch Job, Deployment, HPA, PDB, demand Lease, InferencePool):
  read through watches (list,
  watch), written with server-side apply (patch; an apply that creates also needs create);
  superseded fetch Jobs are deleted.
- gateway children (ServiceAccount, Role, RoleBinding, Deployment, Service, HPA): read one by one
  (get) and written with server-side apply (create, patch).
- pods: list, watch (readiness of a pool's servers).
- secrets: list, watch, only because the gateway's Role grants them on its tenants Secret (the gateway
  watches it by name; RBAC only lets the operator grant what it holds); the operator reads no Secret.
- events: create (the operator's and kopf's Events).
*/}}
{{- define "tgi-pool.namespacedRules" -}}
- apiGroups: [tgipool.io]
  resources: [modelpools, modelgateways]
  verbs: [get, list, watch, patch]
- apiGroups: [tgipool.io]
  resources: [modelpools/status, modelgateways/status]
  verbs: [patch]
{{- if .Values.rbac.ownerReferencesPermissionEnforcement }}
- apiGroups: [tgipool.io]
  resources: [modelpools/finalizers, modelgateways/finalizers]
  verbs: [update]
{{- end }}
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments/scale]
  verbs: [patch]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [inference.networking.k8s.io]
  resources: [inferencepools]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, create, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [secrets]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}
