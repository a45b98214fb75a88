"""Images: read a base (registry, Docker engine, OCI layout/archive, docker-archive, directory),
write deterministic layers on top, and output to an OCI layout, the Docker engine or a registry."""
