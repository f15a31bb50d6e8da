"""Data: the dataset registry, token-store checks, clip sampling, masking, pre-training and fine-tuning clip datasets."""
