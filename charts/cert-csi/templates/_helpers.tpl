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
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The name of the node plugin's DaemonSet, ServiceAccount, ClusterRole and
ClusterRoleBinding: csi-driver's (its chart name) unless nameOverride says
otherwise, so that an upgrade of a csi-driver release updates these objects
in place. The DaemonSet's selector is csi-driver's too (app: <name>): a
selector cannot change.
*/}}
{{- define "cert-csi.nodeName" -}}
{{- .Values.nameOverride | default "cert-manager-csi-driver" | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/*
Whether the node plugins may use an OpenShift SecurityContextConstraints:
openshift.securityContextConstraint.enabled true, or "detect" and the
security.openshift.io/v1 API is served. Prints "true" or nothing.
*/}}
{{- define "cert-csi.openshiftSCC" -}}
{{- $enabled := .Values.openshift.securityContextConstraint.enabled -}}
{{- if kindIs "bool" $enabled -}}
{{- if $enabled }}true{{ end -}}
{{- else if and (eq (toString $enabled) "detect") (.Capabilities.APIVersions.Has "security.openshift.io/v1") -}}
true
{{- end -}}
{{- end -}}

{{/* Selector labels of one component; call with (dict "root" $ "component" "node"). */}}
{{- define "cert-csi.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
An image reference, composed as csi-driver's chart composes it. Call with
(dict "image" <values> "root" $ "home" <prefix> "default" <tag>):
- the repository is image.repository when set; otherwise image.name under
  imageNamespace and imageRegistry, or under "home" (the image's own
  registry) when both of those are empty;
- image.registry, when set, is prefixed to that;
- then :tag@digest, :tag, @digest, or :<default> when neither is set.
csi-driver's image name is read as cert-csi's: it is the driver image, and
csi-driver's binary does not take cert-csi's arguments.
*/}}
{{- define "cert-csi.image" -}}
{{- $image := .image -}}
{{- $values := .root.Values -}}
{{- $repository := $image.repository | default "" -}}
{{- if not $repository -}}
{{- $name := $image.name -}}
{{- if eq $name "cert-manager-csi-driver" -}}
{{- $name = "cert-csi" -}}
{{- end -}}
{{- $repository = $name -}}
{{- if or $values.imageRegistry $values.imageNamespace -}}
{{- with $values.imageNamespace -}}
{{- $repository = printf "%s/%s" . $repository -}}
{{- end -}}
{{- with $values.imageRegistry -}}
{{- $repository = printf "%s/%s" . $repository -}}
{{- end -}}
{{- else if .home -}}
{{- $repository = printf "%s/%s" .home $repository -}}
{{- end -}}
{{- end -}}
{{- with $image.registry -}}
{{- $repository = printf "%s/%s" . $repository -}}
{{- end -}}
{{- $repository -}}
{{- if and $image.tag $image.digest -}}
{{- printf ":%s@%s" $image.tag $image.digest -}}
{{- else if $image.tag -}}
{{- printf ":%s" $image.tag -}}
{{- else if $image.digest -}}
{{- printf "@%s" $image.digest -}}
{{- else if .default -}}
{{- printf ":%s" .default -}}
{{- end -}}
{{- end -}}

{{/* The three images, for the templates. */}}
{{- define "cert-csi.image.driver" -}}
{{- include "cert-csi.image" (dict "image" .Values.image "root" . "home" "" "default" .Chart.AppVersion) -}}
{{- end -}}
{{- define "cert-csi.image.registrar" -}}
{{- include "cert-csi.image" (dict "image" .Values.nodeDriverRegistrarImage "root" . "home" "registry.k8s.io/sig-storage" "default" "") -}}
{{- end -}}
{{- define "cert-csi.image.livenessprobe" -}}
{{- include "cert-csi.image" (dict "image" .Values.livenessProbeImage "root" . "home" "registry.k8s.io/sig-storage" "default" "") -}}
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

{{/*
The SPIFFE settings, where csi-driver-spiffe's value names are accepted too:
app.trustDomain, app.issuer.{name,kind,group} and
app.certificateRequestDuration. Set, such a name is used; its spiffe.*
counterpart must then be left at its default (as in values.yaml) or say the
same, else the render fails naming both. Call with (dict "alias" <name>
"aliasValue" <v> "key" <name> "value" <v> "default" <values.yaml default>).
*/}}
{{- define "cert-csi.spiffeAlias" -}}
{{- if .aliasValue -}}
{{- $value := toString .value -}}
{{- $alias := toString .aliasValue -}}
{{- if and (ne $value (toString .default)) (ne $value $alias) -}}
{{- fail (printf "%s (csi-driver-spiffe's name) is %q but %s is %q: set one of them" .alias $alias .key $value) -}}
{{- end -}}
{{- $alias -}}
{{- else -}}
{{- .value -}}
{{- end -}}
{{- end -}}

{{/* One SPIFFE setting by name: trustDomain.driver, trustDomain.approver,
duration.driver, duration.approver, issuer.name, issuer.kind, issuer.group,
extraAnnotations, runtimeIssuanceConfigMap, approver.issuer. */}}
{{- define "cert-csi.spiffe" -}}
{{- $root := .root -}}
{{- $app := $root.Values.app -}}
{{- $spiffe := $root.Values.spiffe -}}
{{- $issuer := $app.issuer | default dict -}}
{{- $which := .which -}}
{{- if eq $which "trustDomain.driver" -}}
{{- include "cert-csi.spiffeAlias" (dict "alias" "app.trustDomain" "aliasValue" $app.trustDomain "key" "spiffe.driver.trustDomain" "value" $spiffe.driver.trustDomain "default" "cluster.local") -}}
{{- else if eq $which "trustDomain.approver" -}}
{{- include "cert-csi.spiffeAlias" (dict "alias" "app.trustDomain" "aliasValue" $app.trustDomain "key" "spiffe.approver.trustDomain" "value" $spiffe.approver.trustDomain "default" "cluster.local") -}}
{{- else if eq $which "duration.driver" -}}
{{- include "cert-csi.spiffeAlias" (dict "alias" "app.certificateRequestDuration" "aliasValue" $app.certificateRequestDuration "key" "spiffe.driver.duration" "value" $spiffe.driver.duration "default" "1h") -}}
{{- else if eq $which "duration.approver" -}}
{{- include "cert-csi.spiffeAlias" (dict "alias" "app.certificateRequestDuration" "aliasValue" $app.certificateRequestDuration "key" "spiffe.approver.duration" "value" $spiffe.approver.duration "default" "1h") -}}
{{- else if eq $which "issuer.name" -}}
{{- include "cert-csi.spiffeAlias" (dict "alias" "app.issuer.name" "aliasValue" $issuer.name "key" "spiffe.driver.issuer.name" "value" $spiffe.driver.issuer.name "default" "") -}}
{{- else if eq $which "issuer.kind" -}}
{{- include "cert-csi.spiffeAlias" (dict "alias" "app.issuer.kind" "aliasValue" $issuer.kind "key" "spiffe.driver.issuer.kind" "value" $spiffe.driver.issuer.kind "default" "ClusterIssuer") -}}
{{- else if eq $which "approver.issuer" -}}
{{- $approver := $app.approver | default dict -}}
{{- include "cert-csi.spiffeAlias" (dict "alias" "app.approver.signerName" "aliasValue" $approver.signerName "key" "spiffe.approver.issuer" "value" $spiffe.approver.issuer "default" "") -}}
{{- else if eq $which "runtimeIssuanceConfigMap" -}}
{{- include "cert-csi.spiffeAlias" (dict "alias" "app.runtimeIssuanceConfigMap" "aliasValue" $app.runtimeIssuanceConfigMap "key" "spiffe.driver.runtimeIssuanceConfigMap" "value" $spiffe.driver.runtimeIssuanceConfigMap "default" "") -}}
{{- else if eq $which "extraAnnotations" -}}
{{- include "cert-csi.spiffeAlias" (dict "alias" "app.extraCertificateRequestAnnotations" "aliasValue" $app.extraCertificateRequestAnnotations "key" "spiffe.driver.extraCertificateRequestAnnotations" "value" $spiffe.driver.extraCertificateRequestAnnotations "default" "") -}}
{{- else if eq $which "issuer.group" -}}
{{- include "cert-csi.spiffeAlias" (dict "alias" "app.issuer.group" "aliasValue" $issuer.group "key" "spiffe.driver.issuer.group" "value" $spiffe.driver.issuer.group "default" "cert-manager.io") -}}
{{- else -}}
{{- fail (printf "cert-csi.spiffe: unknown setting %s" $which) -}}
{{- end -}}
{{- end -}}

{{/* The leader Lease's namespace: controller.leaderElection.namespace, or
the release's. */}}
{{- define "cert-csi.leaderElectionNamespace" -}}
{{- default .Release.Namespace .Values.controller.leaderElection.namespace -}}
{{- end -}}
