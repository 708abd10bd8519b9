{{/*
The operator's namespaced permissions, used by the ClusterRole (cluster-wide mode) and by the Role
of each watched namespace (namespaced mode), so the two modes can never grant different things.
*/}}
{{- define "sampleforge.runRules" -}}
# The runs: watched by kopf, which also patches its bookkeeping annotations and finalizer.
- apiGroups: ["sampleforge.io"]
  resources: ["augmentationruns", "finetuneruns"]
  verbs: ["get", "list", "watch", "patch"]
# status.phase / conditions / progress / results, written by the operator only.
- apiGroups: ["sampleforge.io"]
  resources: ["augmentationruns/status", "finetuneruns/status"]
  verbs: ["patch"]
# Child Jobs and Services carry ownerReferences with blockOwnerDeletion: true; clusters with the
# OwnerReferencesPermissionEnforcement admission plugin require update on the owner's finalizers.
- apiGroups: ["sampleforge.io"]
  resources: ["augmentationruns/finalizers", "finetuneruns/finalizers"]
  verbs: ["update"]
# One Job per run (created once, suspended/resumed by patch); deleted by garbage collection
# through the owner reference, never by the operator.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch"]
# The run's pods, watched (label selector) to explain a Pending run (unschedulable, image pulls)
# and to check that a heartbeat comes from one of the run's own pods.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# The headless Service of a multi-node FineTuneRun (torch.distributed rendezvous).
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create"]
# The run's spec, handed to its pods as a file (an environment variable is limited to 128 KiB):
# one immutable ConfigMap per run (and spec), created before the Job, read back when it exists
# already, deleted with the run by garbage collection.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create"]
# Events on the runs (JobCreated, phase changes, pod failures), posted by kopf as core/v1 Events;
# listed (field selector: one Job's uid and reason FailedCreate) only for a Job that has had no pods
# for a while, to say why the Job controller cannot create them (quota, LimitRange, admission).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
{{- end }}
{{- define "sampleforge.secretRules" -}}
# Only to check that the credentials Secret a run names exists and has the keys it needs (never
# its values); "get" alone cannot enumerate Secrets.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
