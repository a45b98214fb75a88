"""Kubernetes manifests for what a build produced (``enclave-build k8s``), and EPC capacity
planning (``enclave-build plan-capacity``).

Modules, one job each: :mod:`.settings` (the spec's ``[deploy]`` section), :mod:`.service_info`
(``service.json``, written by the build next to measurements.json), :mod:`.capacity` (EPC per
replica, replicas per node), :mod:`.timing` (probe and grace-period budgets), :mod:`.inputs`
(reading a build output directory), :mod:`.deployment`, :mod:`.secret_server`,
:mod:`.autoscaling` (the objects), :mod:`.layout` (the kustomize tree, written atomically) and
:mod:`.quantity` (Kubernetes resource quantities).
"""
