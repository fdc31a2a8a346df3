{{/* The release's base name; object names are <fullname>-node and <fullname>-controller. */}}
{{- define "cert-csi.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cert-csi.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component; call with (dict "root" $ "component" "node"). */}}
{{- define "cert-csi.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference from {repository, tag, digest}; the digest wins. */}}
{{- define "cert-csi.image" -}}
{{- $tag := .image.tag | default .default -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
The log filter. The csi-driver chart took a klog verbosity (an integer); map
it so its values files keep working.
*/}}
{{- define "cert-csi.logLevel" -}}
{{- $level := .Values.app.logLevel -}}
{{- if kindIs "string" $level -}}
{{- $level -}}
{{- else if le (int $level) 1 -}}
info
{{- else if le (int $level) 4 -}}
debug
{{- else -}}
trace
{{- end -}}
{{- end -}}

{{/* The kubelet's plugin directory for this driver, on the host. */}}
{{- define "cert-csi.pluginDir" -}}
{{- printf "%s/plugins/%s" (.Values.app.kubeletRootDir | trimSuffix "/") .Values.app.driver.name -}}
{{- end -}}

{{- define "cert-csi.metricsAddress" -}}
{{- printf "0.0.0.0:%d" (int .Values.metrics.port) -}}
{{- end -}}
