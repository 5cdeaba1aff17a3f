{{/*
Names and labels.
*/}}
{{- define "ganglion.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The resource name prefix: <release>-ganglion, or the release name if it already contains the
chart name, or fullnameOverride.
*/}}
{{- define "ganglion.fullname" -}}
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

{{- define "ganglion.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of one component (a role, or "proxy"): <fullname>-<component>.
Call with (dict "root" $ "component" "sync").
*/}}
{{- define "ganglion.componentName" -}}
{{- printf "%s-%s" (include "ganglion.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels. Call with (dict "root" $ "component" "sync").
*/}}
{{- define "ganglion.labels" -}}
helm.sh/chart: {{ include "ganglion.chart" .root }}
{{ include "ganglion.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: ganglion
{{- end }}

{{/*
Selector labels. Call with (dict "root" $ "component" "sync").
*/}}
{{- define "ganglion.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ganglion.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The roles, as YAML: role name (as `ganglion worker <role>` takes it) -> key under .Values.workers.
Use with `include "ganglion.roles" . | fromYaml`.
*/}}
{{- define "ganglion.roles" -}}
main: main
sync: sync
federation-reader: federationReader
federation-sender: federationSender
media: media
pusher: pusher
{{- end }}

{{/*
The roles that serve client/federation HTTP and so get a Service and a proxy upstream
(ganglion_routing::Role::serves_http).
*/}}
{{- define "ganglion.httpRoles" -}}
main sync federation-reader media
{{- end }}

{{/*
Whether a role runs at least one pod: "true" or "". Call with (dict "root" $ "role" "sync").
*/}}
{{- define "ganglion.roleRunning" -}}
{{- $key := get (include "ganglion.roles" .root | fromYaml) .role }}
{{- $worker := index .root.Values.workers $key }}
{{- if and $worker.enabled (gt (int $worker.replicas) 0) }}true{{ end }}
{{- end }}

{{/*
The proxy backend (service:port) serving a role's paths: the role's own Service when it runs,
else main's. Call with (dict "root" $ "role" "sync").
*/}}
{{- define "ganglion.backend" -}}
{{- $role := .role }}
{{- if not (include "ganglion.roleRunning" .) }}
{{- $role = "main" }}
{{- end }}
{{- printf "%s:%d" (include "ganglion.componentName" (dict "root" .root "component" $role)) (int .root.Values.ports.http) }}
{{- end }}

{{/*
The port the generated nginx config listens on (ganglion_routing::PROXY_PORT).
*/}}
{{- define "ganglion.proxyPort" -}}
8080
{{- end }}

{{- define "ganglion.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "ganglion.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ganglion.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Secret holding the database URL and its key.
*/}}
{{- define "ganglion.databaseSecret" -}}
{{- default (printf "%s-urls" (include "ganglion.fullname" .)) .Values.postgres.existingSecret }}
{{- end }}
{{- define "ganglion.databaseSecretKey" -}}
{{- if .Values.postgres.existingSecret }}{{ .Values.postgres.existingSecretKey }}{{ else }}database-url{{ end }}
{{- end }}

{{/*
The Secret holding the Redis URL and its key.
*/}}
{{- define "ganglion.redisSecret" -}}
{{- default (printf "%s-urls" (include "ganglion.fullname" .)) .Values.redis.existingSecret }}
{{- end }}
{{- define "ganglion.redisSecretKey" -}}
{{- if .Values.redis.existingSecret }}{{ .Values.redis.existingSecretKey }}{{ else }}redis-url{{ end }}
{{- end }}

{{/*
public_baseurl: the explicit value, else from the first ingress host, else empty.
*/}}
{{- define "ganglion.publicBaseurl" -}}
{{- if .Values.publicBaseurl }}
{{- .Values.publicBaseurl }}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts }}
{{- $host := (first .Values.ingress.hosts).host }}
{{- printf "%s://%s/" (ternary "https" "http" (gt (len .Values.ingress.tls) 0)) $host }}
{{- end }}
{{- end }}

{{/*
The nginx config: files/nginx.conf (generated from the routing table) with each role's
placeholder (__GANGLION_<ROLE>__, see ganglion_routing::helm_placeholder) replaced by its
backend.
*/}}
{{- define "ganglion.nginxConf" -}}
{{- $conf := .Files.Get "files/nginx.conf" }}
{{- if not $conf }}
{{- fail "files/nginx.conf is missing: run `cargo run -p ganglion-routing --example generate`" }}
{{- end }}
{{- range $role := splitList " " (include "ganglion.httpRoles" $) }}
{{- $placeholder := printf "__GANGLION_%s__" (upper (replace "-" "_" $role)) }}
{{- $conf = replace $placeholder (include "ganglion.backend" (dict "root" $ "role" $role)) $conf }}
{{- end }}
{{- if contains "__GANGLION_" $conf }}
{{- fail "files/nginx.conf has a placeholder for a role this chart does not know: update ganglion.httpRoles" }}
{{- end }}
{{- $conf }}
{{- end }}
