"""The model: config, special tokens, transformer, losses, positional-table surgery, checkpoint format and loading.

Imports torch only (never deepspeed, never the data or training packages).
"""
