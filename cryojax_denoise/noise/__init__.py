"""Coloured noise: spectrum estimation from particle backgrounds (`spectrum`), whitening, colouring,
parametric spectra and coloured-noise draws (`whiten`), and the `noise=auto|white|coloured` decision
(`decide`)."""
