"""What both jobs share: the run context from the environment, MinIO storage with atomic commits,
progress heartbeats and structured logs."""
