{{/* Names ------------------------------------------------------------------------------------- */}}
{{- define "synctalk.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "synctalk.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "synctalk.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels: call with (dict "root" $ "component" "api") */}}
{{- define "synctalk.selectorLabels" -}}
app.kubernetes.io/name: {{ include "synctalk.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "synctalk.labels" -}}
helm.sh/chart: {{ include "synctalk.chart" .root }}
{{ include "synctalk.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: synctalk
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{/* Labels of the release as a whole (Secret, ConfigMap, ServiceAccount, rules). */}}
{{- define "synctalk.commonLabels" -}}
helm.sh/chart: {{ include "synctalk.chart" . }}
app.kubernetes.io/name: {{ include "synctalk.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: synctalk
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "synctalk.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "synctalk.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "synctalk.secretName" -}}
{{- default (include "synctalk.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* Images: call with (dict "root" $ "image" .Values.image.api). A digest wins over the tag; the tag
     defaults to image.tag, then the chart's appVersion; `latest` is refused whatever its case. */}}
{{- define "synctalk.image" -}}
{{- $img := .image -}}
{{- $repo := required "image.<component>.repository is required" $img.repository -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- $tag := toString (default (default .root.Chart.AppVersion .root.Values.image.tag) $img.tag) -}}
{{- if or (eq (lower $tag) "latest") (hasPrefix "latest-" (lower $tag)) -}}
{{- fail (printf "image tag %q for %s: `latest` names no build; give a version tag or a digest" $tag $repo) -}}
{{- end -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{/* Security -------------------------------------------------------------------------------------- */}}
{{/* The images' user (deploy/Dockerfile: 10001:10001). */}}
{{- define "synctalk.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "synctalk.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Settings ---------------------------------------------------------------------------------------- */}}
{{/* SYNCTALK_PUBLIC_URL: config.publicUrl, else the first ingress host, else the in-cluster Service. */}}
{{- define "synctalk.publicUrl" -}}
{{- if .Values.config.publicUrl -}}
{{- .Values.config.publicUrl -}}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts -}}
{{- $host := first .Values.ingress.hosts -}}
{{- $tls := false -}}
{{- range .Values.ingress.tls -}}{{- if has $host .hosts -}}{{- $tls = true -}}{{- end -}}{{- end -}}
{{- printf "%s://%s" (ternary "https" "http" $tls) $host -}}
{{- else -}}
{{- printf "http://%s-api.%s.svc:%v" (include "synctalk.fullname" .) .Release.Namespace .Values.api.service.port -}}
{{- end -}}
{{- end -}}

{{/* The ConfigMap's data (non-secret SYNCTALK_* settings), as a YAML map of strings; the migration
     hook renders the same map inline, since the ConfigMap does not exist yet when it runs. */}}
{{- define "synctalk.configData" -}}
SYNCTALK_ENVIRONMENT: production
SYNCTALK_DATA_DIR: /data
SYNCTALK_MODEL_DIR: {{ .Values.config.modelDir | quote }}
SYNCTALK_STORAGE_URL: {{ required "config.storageUrl is required (s3://BUCKET)" .Values.config.storageUrl | quote }}
SYNCTALK_S3_REGION: {{ .Values.config.s3Region | quote }}
{{- with .Values.config.s3EndpointUrl }}
SYNCTALK_S3_ENDPOINT_URL: {{ . | quote }}
{{- end }}
{{- with .Values.config.s3PublicEndpointUrl }}
SYNCTALK_S3_PUBLIC_ENDPOINT_URL: {{ . | quote }}
{{- end }}
SYNCTALK_PUBLIC_URL: {{ include "synctalk.publicUrl" . | quote }}
SYNCTALK_TRUSTED_PROXIES: {{ .Values.config.trustedProxies | quote }}
SYNCTALK_DIRECT_UPLOAD_MAX_BYTES: {{ .Values.config.directUploadMaxBytes | int64 | quote }}
SYNCTALK_LOG_FORMAT: {{ .Values.config.logFormat | quote }}
SYNCTALK_TRACE_SAMPLE_RATIO: {{ .Values.config.traceSampleRatio | toString | quote }}
{{- with .Values.config.otlpEndpoint }}
SYNCTALK_OTLP_ENDPOINT: {{ . | quote }}
{{- end }}
{{- range $name, $value := .Values.config.extraEnv }}
{{ $name }}: {{ toString $value | quote }}
{{- end }}
{{- end -}}

{{/* The env entries read from the Secret. Call with (dict "root" $ "keys" (list "secret-key" ...)).
     Optional keys (metrics token, AWS keys) may be absent from the Secret. */}}
{{- define "synctalk.secretEnv" -}}
{{- include "synctalk.secretEnvList" . | trim -}}
{{- end -}}

{{- define "synctalk.secretEnvList" -}}
{{- $names := dict
  "secret-key" "SYNCTALK_SECRET_KEY"
  "database-url" "SYNCTALK_DATABASE_URL"
  "broker-url" "SYNCTALK_BROKER_URL"
  "metrics-token" "SYNCTALK_METRICS_TOKEN"
  "aws-access-key-id" "AWS_ACCESS_KEY_ID"
  "aws-secret-access-key" "AWS_SECRET_ACCESS_KEY" -}}
{{- $optional := list "metrics-token" "aws-access-key-id" "aws-secret-access-key" -}}
{{- $secret := default (include "synctalk.secretName" .root) .secretName -}}
{{- range .keys }}
- name: {{ index $names . }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ . }}
      {{- if has . $optional }}
      optional: true
      {{- end }}
{{- end }}
{{- end -}}

{{/* What every platform container gets: the ConfigMap, then its secrets. */}}
{{- define "synctalk.envFrom" -}}
- configMapRef:
    name: {{ include "synctalk.fullname" . }}
{{- end -}}

{{/* Pod annotations that roll the pods when the settings change. */}}
{{- define "synctalk.checksums" -}}
checksum/config: {{ include "synctalk.configData" . | sha256sum }}
{{- if not .Values.secrets.existingSecret }}
checksum/secret: {{ include "synctalk.secretInputs" . | sha256sum }}
{{- end }}
{{- end -}}

{{/* The Secret's inputs as given in values (generated values are not part of it: they never change). */}}
{{- define "synctalk.secretInputs" -}}
{{ toJson .Values.secrets }}{{ toJson .Values.database }}{{ toJson .Values.broker }}
{{- end -}}

{{/* Secrets ----------------------------------------------------------------------------------------- */}}
{{/* SYNCTALK_DATABASE_URL: secrets.databaseUrl, else built from database.* and the password. */}}
{{- define "synctalk.databaseUrl" -}}
{{- if .Values.secrets.databaseUrl -}}
{{- .Values.secrets.databaseUrl -}}
{{- else -}}
{{- $d := .Values.database -}}
{{- $auth := $d.user | urlquery -}}
{{- if .Values.secrets.databasePassword -}}{{- $auth = printf "%s:%s" $auth (.Values.secrets.databasePassword | urlquery) -}}{{- end -}}
{{- printf "postgresql+psycopg2://%s@%s:%v/%s" $auth (required "database.host is required" $d.host) ($d.port | int) $d.name -}}
{{- with $d.sslmode }}{{ printf "?sslmode=%s" . }}{{ end -}}
{{- end -}}
{{- end -}}

{{/* SYNCTALK_BROKER_URL: secrets.brokerUrl, else built from broker.* and the password (Celery wants
     ssl_cert_reqs on a rediss:// URL). */}}
{{- define "synctalk.brokerUrl" -}}
{{- if .Values.secrets.brokerUrl -}}
{{- .Values.secrets.brokerUrl -}}
{{- else -}}
{{- $b := .Values.broker -}}
{{- $auth := "" -}}
{{- if and $b.auth .Values.secrets.redisPassword -}}{{- $auth = printf ":%s@" (.Values.secrets.redisPassword | urlquery) -}}{{- end -}}
{{- printf "%s://%s%s:%v/%v" (ternary "rediss" "redis" $b.tls) $auth (required "broker.host is required" $b.host) ($b.port | int) ($b.databaseIndex | int) -}}
{{- if $b.tls }}?ssl_cert_reqs=required{{ end -}}
{{- end -}}
{{- end -}}

{{/* The Secret's data (base64). SYNCTALK_SECRET_KEY: secrets.secretKey, else the value the release's
     Secret already holds (upgrades keep it), else a new random one. */}}
{{- define "synctalk.secretData" -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "synctalk.fullname" .) | default dict -}}
{{- $old := get $existing "data" | default dict -}}
{{- $s := .Values.secrets -}}
secret-key: {{ if $s.secretKey }}{{ $s.secretKey | b64enc }}{{ else if hasKey $old "secret-key" }}{{ index $old "secret-key" }}{{ else }}{{ randAlphaNum 64 | b64enc }}{{ end }}
database-url: {{ include "synctalk.databaseUrl" . | b64enc }}
broker-url: {{ include "synctalk.brokerUrl" . | b64enc }}
{{- if and .Values.broker.auth $s.redisPassword }}
redis-password: {{ $s.redisPassword | b64enc }}
{{- end }}
{{- with $s.metricsToken }}
metrics-token: {{ . | b64enc }}
{{- end }}
{{- with $s.awsAccessKeyId }}
aws-access-key-id: {{ . | b64enc }}
{{- end }}
{{- with $s.awsSecretAccessKey }}
aws-secret-access-key: {{ . | b64enc }}
{{- end }}
{{- end -}}

{{/* Volumes --------------------------------------------------------------------------------------- */}}
{{/* emptyDirs for the only paths a container writes: call with (dict "tmp" "8Gi" "data" "1Gi" "shm" "") */}}
{{- define "synctalk.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .tmp }}
- name: data
  emptyDir:
    sizeLimit: {{ .data }}
{{- if .shm }}
- name: shm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .shm }}
{{- end }}
{{- end -}}

{{- define "synctalk.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: /data
{{- if .shm }}
- name: shm
  mountPath: /dev/shm
{{- end }}
{{- end -}}
