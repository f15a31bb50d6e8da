"""video2token: decode videos at a fixed FPS, tokenize frames with a frozen VQ-VAE, store integer codes in HDF5."""
