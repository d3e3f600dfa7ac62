{{/*
RBAC rules, shared by the ClusterRole (cluster-wide mode) and each Role (namespaced mode).
*/}}
{{- define "paddle-operator.namespacedRules" -}}
# The custom resource: kopf patches it (finalizer, progress annotations) and writes status.
- apiGroups: ["serving.paddlesla.io"]
  resources: ["paddlemodelservices"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["serving.paddlesla.io"]
  resources: ["paddlemodelservices/status", "paddlemodelservices/scale"]
  verbs: ["get", "patch", "update"]
# Owner references with blockOwnerDeletion need update on finalizers where
# OwnerReferencesPermissionEnforcement is on (e.g. OpenShift).
- apiGroups: ["serving.paddlesla.io"]
  resources: ["paddlemodelservices/finalizers"]
  verbs: ["update"]
# Children, applied with server-side apply and garbage-collected through owner references.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Only to check that referenced Secrets and PVCs exist; their contents are read by the pods.
- apiGroups: [""]
  resources: ["secrets", "persistentvolumeclaims"]
  verbs: ["get"]
# Read-back of pod state for status (e.g. why a pod is not ready).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
# Canary traffic split through the Gateway API or Istio. Always granted: the operator prunes these
# kinds whenever their CRDs exist, and a 403 there would fail every reconcile.
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["networking.istio.io"]
  resources: ["virtualservices", "destinationrules"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
{{- end }}
{{- define "paddle-operator.scanningRules" -}}
# kopf discovers resources and namespaces at startup and follows their changes.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
