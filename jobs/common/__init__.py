"""What both jobs share: the run context from the environment, MinIO storage with atomic commits,
progress heartbeats and structured logs, and the process-independent hashes that random numbers are
derived from."""
