"""Simulated data: the built-in phantom (`phantom`) and cryojax projections with CTF and noise (`simulate`)."""
