{{- define "lmforge.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lmforge.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "lmforge.labels" -}}
app.kubernetes.io/name: {{ include "lmforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "lmforge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lmforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "lmforge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "lmforge.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The namespaces the operator watches when rbac.scope is namespace. */}}
{{- define "lmforge.watchedNamespaces" -}}
{{- if .Values.rbac.namespaces -}}
{{- join "," .Values.rbac.namespaces -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* The rules the operator needs in a namespace it watches: what operator/kube.py and kopf call.
No Secrets: the pods mount the ones their specs name; the operator never reads one. */}}
{{- define "lmforge.namespacedRules" -}}
{{- $plurals := list "datasets" "pretrainjobs" "finetunes" "rewardmodels" "evaluations" "deployments" }}
- apiGroups: ["lmforge.dev"]
  resources: {{ toJson $plurals }}
  # patch/update: kopf's finalizer and annotations.
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["lmforge.dev"]
  resources:
  {{- range $plurals }}
    - {{ . }}/status
  {{- end }}
  verbs: ["get", "patch", "update"]
- apiGroups: ["lmforge.dev"]
  resources:
  {{- range $plurals }}
    - {{ . }}/finalizers
  {{- end }}
  # Child objects carry blockOwnerDeletion owner references.
  verbs: ["update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "create", "patch", "delete"]
- apiGroups: ["apps"]
  # Deployment: the server's pods.
  resources: ["deployments"]
  verbs: ["get", "list", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  # A Deployment's servers take connections on the API port only.
  resources: ["networkpolicies"]
  verbs: ["get", "list", "create", "patch", "delete"]
- apiGroups: ["policy"]
  # A Deployment's servers are disrupted one at a time.
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "create", "patch", "delete"]
- apiGroups: ["scheduling.volcano.sh", "scheduling.x-k8s.io"]
  # A training gang's PodGroup, where Volcano or the coscheduling plugin is installed.
  resources: ["podgroups"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["ray.io"]
  # A Dataset's Ray head and workers, where KubeRay is installed (jobs.rayClusters).
  resources: ["rayclusters"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["kueue.x-k8s.io"]
  # Why a queued gang waits: the conditions of its pod group's Workload.
  resources: ["workloads"]
  verbs: ["get", "list"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
