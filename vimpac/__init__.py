"""vimpac: spatio-temporal token transformer, masked-token + contrastive pre-training, fine-tuning (Tan et al., 2021, arXiv 2106.11250)."""
