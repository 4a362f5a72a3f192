"""Covariance Wiener filtering (CWF) and its steerable Fourier-Bessel basis."""
