{{/* Chart name, or nameOverride. */}}
{{- define "agent-runtime.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name of every object (63 characters at most, a DNS label). */}}
{{- define "agent-runtime.fullname" -}}
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

{{/* The headless Service's name; trimmed so the suffix always fits. */}}
{{- define "agent-runtime.headlessName" -}}
{{- printf "%s-headless" (include "agent-runtime.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "agent-runtime.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "agent-runtime.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agent-runtime.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "agent-runtime.labels" -}}
helm.sh/chart: {{ include "agent-runtime.chart" . }}
{{ include "agent-runtime.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "agent-runtime.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agent-runtime.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image; without image.repository (there is no public image) the install fails
with how to build, push and name one, rather than a pod in ImagePullBackOff. */}}
{{- define "agent-runtime.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if not .Values.image.repository }}
{{- fail (printf "image.repository is not set, and there is no public agent-runtime image: build it from the repository's Dockerfile and push it where the cluster pulls from (docker build -t REGISTRY/agent-runtime:%s . && docker push REGISTRY/agent-runtime:%s), then install with --set image.repository=REGISTRY/agent-runtime (on kind: kind load docker-image agent-runtime:%s, and image.repository=agent-runtime)" $tag $tag $tag) }}
{{- end }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* The config file the ConfigMap holds: server settings and agents. Settings the chart
itself controls are refused here, with where to set them instead. */}}
{{- define "agent-runtime.configFile" -}}
{{- $owned := dict "host" "the chart listens on 0.0.0.0" "port" "set ports.grpc" "metrics_port" "set ports.metrics" "config_file" "the chart's ConfigMap is the config file" "auth_token" "a ConfigMap is no place for a secret: put AGENT_RUNTIME_AUTH_TOKEN in the Secret named by envFromSecret" "auth_operator_token" "a ConfigMap is no place for a secret: put AGENT_RUNTIME_AUTH_OPERATOR_TOKEN in the Secret named by envFromSecret" "tls_cert" "kubelet's gRPC probes speak plaintext only: terminate TLS at the Ingress, the Gateway or a service mesh" }}
{{- range $key, $advice := $owned }}
{{- if hasKey $.Values.server $key }}
{{- fail (printf "server.%s cannot be set: %s" $key $advice) }}
{{- end }}
{{- end }}
{{- $a2aURL := printf "%s.%s.svc:%v" (include "agent-runtime.fullname" .) .Release.Namespace .Values.ports.grpc }}
{{- $server := merge (deepCopy .Values.server) (dict "a2a_url" $a2aURL) }}
{{- dict "server" $server "agents" .Values.agents | toYaml }}
{{- end }}

{{/* Seconds before SIGKILL: the preStop sleep, the drain, the cancel grace and slack. */}}
{{- define "agent-runtime.terminationGracePeriodSeconds" -}}
{{- $drain := ceil (default 25 .Values.server.drain_timeout) | int }}
{{- $floor := add .Values.preStopSleepSeconds $drain }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $floor (ceil (default 5 .Values.server.cancel_grace) | int) 5 }}
{{- else if le (int .Values.terminationGracePeriodSeconds) (int $floor) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed preStopSleepSeconds + server.drain_timeout (%v), or in-flight runs are killed mid-drain" .Values.terminationGracePeriodSeconds $floor) }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* Service ports: the same on the ClusterIP and the headless Service. */}}
{{- define "agent-runtime.servicePorts" -}}
- name: grpc
  port: {{ .Values.ports.grpc }}
  targetPort: grpc
  protocol: TCP
  appProtocol: grpc
{{- if gt (int .Values.ports.metrics) 0 }}
- name: metrics
  port: {{ .Values.ports.metrics }}
  targetPort: metrics
  protocol: TCP
  appProtocol: http
{{- end }}
{{- end }}
