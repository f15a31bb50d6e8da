"""Training: runtime set-up, the one training loop, the pre-training and fine-tuning tasks.

The only package that imports deepspeed (its private attributes live in `ds_compat`).
"""
