"""Per-image classical denoisers: Gaussian / Wiener filters, BM3D, K-SVD (Batch-OMP), DDTF, TV."""
