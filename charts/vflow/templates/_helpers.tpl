{{/* Chart name. */}}
{{- define "vflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-operator, or fullnameOverride. Also the ServiceAccount, RBAC and Lease name. */}}
{{- define "vflow.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "vflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vflow.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vflow.labels" -}}
{{ include "vflow.selectorLabels" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: vflow
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "vflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "vflow.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "vflow.image" -}}
{{- $repo := .Values.image.repository -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Cross-field checks the schema cannot express; each fails the install with a sentence. */}}
{{- define "vflow.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) -}}
{{- fail (printf "replicaCount is %d but leaderElection.enabled is false: two operators without a leader would both reconcile; enable leaderElection or use one replica" (int .Values.replicaCount)) -}}
{{- end -}}
{{- if ge (int .Values.leaderElection.renewSeconds) (int .Values.leaderElection.leaseSeconds) -}}
{{- fail (printf "leaderElection.renewSeconds (%d) must be less than leaderElection.leaseSeconds (%d): the leader would lose its Lease between renewals" (int .Values.leaderElection.renewSeconds) (int .Values.leaderElection.leaseSeconds)) -}}
{{- end -}}
{{- if and .Values.runs.webhook.enabled (not .Values.runs.webhook.tokenSecret.name) -}}
{{- fail "runs.webhook.enabled is true but runs.webhook.tokenSecret.name is empty: create a Secret with MinIO's auth_token and name it there (an open webhook lets anyone in the cluster start runs)" -}}
{{- end -}}
{{- if and .Values.runs.webhook.enabled (eq (int .Values.runs.webhook.port) 8080) -}}
{{- fail "runs.webhook.port is 8080, the operator's metrics and probe port: pick another" -}}
{{- end -}}
{{- range $k, $v := .Values.operator.stagePodAnnotations -}}
{{- if or (contains "," $k) (contains "," (toString $v)) -}}
{{- fail (printf "operator.stagePodAnnotations[%q]: keys and values may not contain a comma (VFLOW_OPERATOR_POD_ANNOTATIONS is comma-separated)" $k) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A map as k=v,k=v (sorted by key). */}}
{{- define "vflow.keyValues" -}}
{{- $out := list -}}
{{- range $k, $v := . -}}
{{- $out = append $out (printf "%s=%v" $k $v) -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}

{{/* The selector labels as key=value,key=value (VFLOW_OPERATOR_POD_SELECTOR). */}}
{{- define "vflow.podSelectorArg" -}}
{{- $labels := include "vflow.selectorLabels" . | fromYaml -}}
{{- $pairs := list -}}
{{- range $k := keys $labels | sortAlpha -}}
{{- $pairs = append $pairs (printf "%s=%s" $k (get $labels $k)) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
