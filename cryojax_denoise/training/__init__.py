"""Training, checkpointing, sharding and restoring of the learned denoisers (GAN and autoencoder)."""
