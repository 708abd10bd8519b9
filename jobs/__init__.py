"""The workloads that run inside the GPU pods (``sampleforge.jobs``): augmentation and fine-tuning,
with the storage and progress code they share."""
