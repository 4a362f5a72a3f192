"""MRC stacks and RELION STAR files: reading with checks, writing atomically.

Every reader raises `InputError` with the file and the problem; every writer writes to a
temporary name beside the target and renames it when complete, so a crash never leaves a
half-written file and an existing input is never overwritten by accident.
`atomic.py` (atomic writes, output checks), `mrc.py` (stacks, maps), `star.py` (STAR files).
"""

from cryojax_denoise.io.atomic import atomic_path, atomic_write_text, check_not_input
from cryojax_denoise.io.mrc import (ImageReader, Stack, StackWriter, check_input_file, check_square,
                                    path_is_stack_name, read_pixel_size, read_stack, read_volume, write_stack,
                                    write_volume)
from cryojax_denoise.io.star import ParticleStar, read_star, star_images, write_star

__all__ = ["ImageReader", "ParticleStar", "Stack", "StackWriter", "atomic_path", "atomic_write_text",
           "check_input_file", "check_not_input", "check_square", "path_is_stack_name", "read_pixel_size",
           "read_stack", "read_star", "read_volume", "star_images", "write_stack", "write_star", "write_volume"]
