"""Special token ids ([MASK], [PAD], [CLS], spares), derived from the tokenizer's vocabulary size.

VIMPAC (Tan et al., 2021) appends its special tokens after the VQ-VAE codebook. This is the
one place that decides their ids; everything else asks `SpecialTokens.from_vocab_size(v)`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

#: spare ids reserved after [CLS]; 5 makes the table size a multiple of 8 for 8192 codes,
#: which keeps the embedding / tied-decoder matmuls aligned.
NUM_SPARE = 5


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the special tokens for a tokenizer with `vocab_size` codes in [0, vocab_size)."""

    vocab_size: int
    mask: int
    pad: int
    cls: int
    spare: tuple[int, ...]

    @classmethod
    def from_vocab_size(cls, vocab_size: int) -> "SpecialTokens":
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
        v = vocab_size
        return cls(vocab_size=v, mask=v, pad=v + 1, cls=v + 2, spare=tuple(range(v + 3, v + 3 + NUM_SPARE)))

    @property
    def num_embeddings(self) -> int:
        """Rows of the code-embedding table: codes + [MASK] + [PAD] + [CLS] + spares."""
        return self.vocab_size + 3 + len(self.spare)

    def is_code(self, codes: torch.Tensor) -> torch.Tensor:
        """Bool tensor: True where `codes` holds a real tokenizer code (not a special token)."""
        return (codes >= 0) & (codes < self.vocab_size)
