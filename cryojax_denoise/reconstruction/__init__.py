"""3D reconstruction with known poses (direct Fourier inversion) and FSC resolution."""

from cryojax_denoise.reconstruction.fourier import (  # noqa: F401
    HalfMaps, backproject, half_map_resolution, half_maps, invert, particle_params, random_halves, reconstruct)
from cryojax_denoise.reconstruction.fsc import fsc_curve, fsc_resolution, shell_frequencies  # noqa: F401
