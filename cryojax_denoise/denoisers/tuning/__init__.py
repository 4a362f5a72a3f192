"""Choosing a denoiser's knob: Monte-Carlo SURE (no clean images) and grid search on clean images."""
