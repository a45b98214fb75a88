"""How a built service is deployed, as the build records it: the spec's ``[deploy]`` section
(:mod:`.settings`), Kubernetes quantities (:mod:`.quantity`) and ``service.json``
(:mod:`.service_info`), which ``enclave-build k8s`` (:mod:`builder.k8s`) reads."""
