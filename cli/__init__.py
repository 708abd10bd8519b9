"""``kubectl sampleforge``: the runs from a terminal, without an S3 client or a JSONPath.

kubectl finds plugins named ``kubectl-<name>`` on PATH, so installing this package makes
``kubectl sampleforge status RUN`` work next to ``kubectl get``; the same program is installed as
``sampleforge`` for people who do not go through kubectl. It reads runs with the user's own kube
credentials (``--context``, ``--namespace``, KUBECONFIG) and reads their outputs from MinIO with the
credentials Secret the run itself names, so it can show nothing the user could not already read.

The pure parts (:mod:`.refs`, :mod:`.views`, :mod:`.lint`) import neither kubernetes nor minio, so
they are unit-tested on their own and ``lint`` works offline.
"""
