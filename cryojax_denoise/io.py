"""MRC stacks and RELION STAR files: reading with checks, writing atomically.

Every reader raises `InputError` with the file and the problem; every writer writes
to a temporary name beside the target and renames it when complete, so a crash never
leaves a half-written file and an existing input is never overwritten by accident.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from dataclasses import dataclass

import typing

import mrcfile
import numpy as np

from cryojax_denoise.errors import InputError

if typing.TYPE_CHECKING:
  import pandas as pd
# pandas and starfile are imported where STAR files are handled: a run on MRC stacks (and every
# bad-input exit) starts faster without them.


# ---------------------------------------------------------------------------- writing

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str):
  """Yields a temporary path beside `path`; renames it onto `path` only on success.

  On failure the temporary file is removed, and so are the folders this call created.
  """
  directory = os.path.dirname(os.path.abspath(path)) or "."
  created = _missing_dirs(directory)
  os.makedirs(directory, exist_ok=True)
  base = os.path.basename(path)
  fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp" + os.path.splitext(base)[1], dir=directory)
  os.close(fd)
  ok = False
  try:
    yield tmp
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
    os.replace(tmp, path)
    ok = True
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
    if not ok:
      for d in created:  # deepest first
        with contextlib.suppress(OSError):
          os.rmdir(d)


def _missing_dirs(directory: str) -> list[str]:
  """The folders of `directory` that do not exist yet, deepest first."""
  missing = []
  while directory and not os.path.exists(directory):
    missing.append(directory)
    parent = os.path.dirname(directory)
    if parent == directory:
      break
    directory = parent
  return missing


def atomic_write_text(path: str, text: str) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, "w") as f:
      f.write(text)


def check_not_input(output: str, *inputs: str) -> None:
  """Refuses an output path that is an existing directory or one of the inputs (we never overwrite
  user data); called before any work."""
  if os.path.isdir(output):
    raise InputError(f"{output}: output path is a directory; give a file name in it (e.g. "
                     f"{os.path.join(output, 'denoised.mrcs')})")
  for inp in inputs:
    if inp and os.path.exists(output) and os.path.exists(inp) and os.path.samefile(output, inp):
      raise InputError(f"{output}: output path is the input file; choose another output")
    if inp and os.path.abspath(output) == os.path.abspath(inp):
      raise InputError(f"{output}: output path is the input file; choose another output")


def write_stack(path: str, images, pixel_size: float) -> None:
  """Writes (N, H, W) float32 images as an MRC image stack with the pixel size (Å) in the header."""
  images = np.asarray(images, dtype=np.float32)
  if images.ndim == 2:
    images = images[None]
  with atomic_path(path) as tmp:
    with mrcfile.new(tmp, overwrite=True) as mrc:
      mrc.set_data(images)
      mrc.set_image_stack()
      mrc.voxel_size = float(pixel_size)


def write_volume(path: str, volume, pixel_size: float) -> None:
  """Writes a (D, H, W) float32 map as an MRC volume with the voxel size (Å) in the header."""
  with atomic_path(path) as tmp:
    with mrcfile.new(tmp, overwrite=True) as mrc:
      mrc.set_data(np.asarray(volume, dtype=np.float32))
      mrc.set_volume()
      mrc.voxel_size = float(pixel_size)


class StackWriter:
  """Writes a large (N, H, W) float32 stack in batches without holding it in memory; atomic on close.

  Use as a context manager; the file appears at `path` only when every image was written.
  Batches go to the file with plain writes (not through a memory map, whose dirty pages would
  stay resident and grow the process to the stack's size); header statistics are accumulated.
  """

  def __init__(self, path: str, n: int, shape: tuple[int, int], pixel_size: float):
    self.path, self.n, self.shape, self.pixel_size = path, int(n), tuple(shape), pixel_size
    self._ctx = atomic_path(path)
    self._written = 0
    self._file = None

  def __enter__(self):
    self._tmp = self._ctx.__enter__()
    try:
      with mrcfile.new_mmap(self._tmp, shape=(self.n, *self.shape), mrc_mode=2, overwrite=True) as mrc:
        mrc.set_image_stack()
        mrc.voxel_size = float(self.pixel_size)
        self._offset = int(mrc.header.nbytes) + int(mrc.header.nsymbt)
        self._dtype = mrc.data.dtype
      self._file = open(self._tmp, "r+b")
    except BaseException as e:
      self._ctx.__exit__(type(e), e, e.__traceback__)
      raise
    self._min, self._max, self._sum, self._sumsq = np.inf, -np.inf, 0.0, 0.0
    return self

  def write(self, start: int, images) -> None:
    """Writes images (n, H, W) at positions start .. start + n - 1."""
    images = np.ascontiguousarray(images, dtype=self._dtype)
    if images.ndim != 3 or images.shape[1:] != self.shape or start < 0 or start + len(images) > self.n:
      raise ValueError(f"{self.path}: cannot write images of shape {images.shape} at {start} "
                       f"into a stack of {self.n} images of {self.shape}")
    if len(images) == 0:
      return
    self._file.seek(self._offset + start * images[0].nbytes)
    images.tofile(self._file)
    values = images.astype(np.float64)
    self._min = min(self._min, float(values.min()))
    self._max = max(self._max, float(values.max()))
    self._sum += float(values.sum())
    self._sumsq += float(np.square(values).sum())
    self._written += len(images)

  def _finish(self) -> None:
    self._file.close()
    count = self.n * self.shape[0] * self.shape[1]
    mean = self._sum / max(count, 1)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      with mrcfile.mmap(self._tmp, mode="r+") as mrc:  # header only: data pages are not touched
        mrc.header.dmin, mrc.header.dmax, mrc.header.dmean = self._min, self._max, mean
        mrc.header.rms = float(np.sqrt(max(self._sumsq / max(count, 1) - mean * mean, 0.0)))

  def __exit__(self, exc_type, exc, tb):
    if exc_type is None and self._written != self.n:
      exc = RuntimeError(f"{self.path}: wrote {self._written} of {self.n} images")
      exc_type, tb = RuntimeError, None
      self._file.close()
      self._ctx.__exit__(exc_type, exc, tb)  # removes the temporary file
      raise exc
    if exc_type is None:
      try:
        self._finish()
      except BaseException as e:
        self._ctx.__exit__(type(e), e, e.__traceback__)
        raise
      self._ctx.__exit__(None, None, None)  # renames onto path
      return False
    if not self._file.closed:
      self._file.close()
    self._ctx.__exit__(exc_type, exc, tb)
    return False


# ---------------------------------------------------------------------------- reading MRC


_MODE_BYTES = {0: 1, 1: 2, 2: 4, 3: 4, 4: 8, 6: 2, 12: 2}


def _truncation(path: str) -> str | None:
  """Says how an MRC file is cut short when its header looks like an MRC header, else None.

  Reads the 1024-byte header (either byte order): nx, ny, nz, mode, and the extended header size,
  and compares the size the header promises with the file's size.
  """
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(1024)
  if len(head) < 16:
    return None
  for order in ("<", ">"):
    nx, ny, nz, mode = np.frombuffer(head[:16], dtype=order + "i4")
    if not (0 < nx < 2**20 and 0 < ny < 2**20 and 0 <= nz < 2**31 and int(mode) in _MODE_BYTES):
      continue
    has_map_id = head[208:212] == b"MAP "
    if len(head) < 1024:
      if has_map_id or len(head) < 208:
        return f"truncated MRC file: {size} bytes, shorter than the 1024-byte header"
      return None
    nsymbt = int(np.frombuffer(head[92:96], dtype=order + "i4")[0])
    expected = 1024 + max(nsymbt, 0) + int(nx) * int(ny) * int(nz) * _MODE_BYTES[int(mode)]
    if size < expected:
      return (f"truncated MRC file: header says {int(nz)} section(s) of {int(nx)}x{int(ny)} "
              f"({expected} bytes), file has {size} bytes")
    return None
  return None


def check_input_file(path: str, what: str = "file") -> None:
  """Refuses a user-given path that is missing, a folder or empty, naming `what` it should be."""
  if not os.path.exists(path):
    raise InputError(f"{path}: {what} not found")
  if os.path.isdir(path):
    raise InputError(f"{path}: is a folder, expected {what}")
  if os.path.getsize(path) == 0:
    raise InputError(f"{path}: empty {what}")


def _open_mrc(path: str, mmap: bool):
  check_input_file(path, "MRC file")
  truncated = _truncation(path)
  if truncated:
    raise InputError(f"{path}: {truncated}")
  opener = mrcfile.mmap if mmap else mrcfile.open
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      return opener(path, mode="r", permissive=False)
  except ValueError as e:
    strict_msg = str(e).split("\n")[0]
  except Exception as e:  # noqa: BLE001 - mrcfile raises many types on garbage
    raise InputError(f"{path}: not a readable MRC file ({type(e).__name__}: {e})") from None
  # Older writers (some RELION/EMAN stacks) omit the MAP ID string: accept them when the
  # header is otherwise sane and the data block matches the file size.
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      mrc = opener(path, mode="r", permissive=True)
  except Exception:  # noqa: BLE001
    raise InputError(f"{path}: not an MRC file ({strict_msg})") from None
  h = mrc.header
  sane = mrc.data is not None and 0 < int(h.nx) < 2**20 and 0 < int(h.ny) < 2**20 and 0 <= int(h.nz) < 2**31
  if not sane:
    messages = " ".join(str(w.message).split("\n")[0] for w in caught)
    mrc.close()
    if "too short" in messages or "smaller than expected" in messages:
      raise InputError(f"{path}: truncated MRC file ({messages})")
    raise InputError(f"{path}: not an MRC file ({strict_msg})")
  return mrc


def read_pixel_size(path: str) -> float:
  """Pixel (voxel) size in Å from the MRC header; 0.0 when the header does not say."""
  mrc = _open_mrc(path, mmap=True)
  try:
    return float(mrc.voxel_size.x)
  finally:
    mrc.close()


def path_is_stack_name(path: str) -> bool:
  return str(path).endswith(".mrcs")


@dataclass
class Stack:
  """An (N, H, W) image stack; `data` may be a read-only memory map of the file."""

  data: np.ndarray
  pixel_size: float
  path: str

  def __len__(self):
    return self.data.shape[0]


def read_stack(path: str, mmap: bool = True, check_finite: bool = True, allow_volume: bool = False) -> Stack:
  """Reads an MRC image stack (a 2D image is a stack of one), checked for shape and values.

  A 3D MRC flagged as a volume (ISPG 1, `.mrc`) is refused unless `allow_volume`;
  mode 0/1/2/6/12 data are returned as-is (cast to float32 lazily by callers).
  """
  mrc = _open_mrc(path, mmap=mmap)
  data = mrc.data
  if data is None:
    raise InputError(f"{path}: MRC file holds no data")
  if data.ndim == 2:
    data = data[None]
  elif data.ndim != 3:
    raise InputError(f"{path}: expected a stack of 2D images, got data of {data.ndim} dimensions {data.shape}")
  elif not allow_volume and mrc.header.ispg == 1 and not path.endswith(".mrcs") and data.shape[0] == data.shape[1] == data.shape[2] and data.shape[0] > 1:
    raise InputError(f"{path}: is a 3D volume {data.shape}, expected a stack of 2D images")
  if data.shape[0] == 0 or data.shape[1] == 0 or data.shape[2] == 0:
    raise InputError(f"{path}: empty stack (shape {data.shape})")
  if np.iscomplexobj(data):
    raise InputError(f"{path}: complex-valued MRC data, expected real images")
  if check_finite:
    _check_finite(path, data)
  return Stack(data=data, pixel_size=float(mrc.voxel_size.x), path=path)


def _check_finite(path: str, data: np.ndarray, chunk: int = 4096) -> None:
  """Scans in chunks (memory stays bounded for memory-mapped stacks)."""
  if not np.issubdtype(data.dtype, np.floating):
    return
  for start in range(0, data.shape[0], chunk):
    block = np.asarray(data[start:start + chunk])
    if not np.isfinite(block).all():
      bad = start + int(np.argwhere(~np.isfinite(block).reshape(len(block), -1).all(axis=1))[0][0])
      raise InputError(f"{path}: image {bad + 1} contains NaN or Inf values")


def check_square(path: str, shape) -> None:
  """Refuses non-square images (H != W): the denoisers and projections work on square boxes."""
  h, w = int(shape[-2]), int(shape[-1])
  if h != w:
    raise InputError(f"{path}: images are {h}x{w} pixels, expected square images")


class ImageReader:
  """Reads chosen images of MRC stacks as float32 with memory bounded by what is asked for.

  Each `read` maps the file's data block only for the copy and unmaps it afterwards: a memory
  map kept open for a whole pass would keep every page read resident (RSS grows to the stack's
  size). The layout (data offset, dtype, shape) of each stack is read once from its header.
  """

  def __init__(self):
    self._layouts: dict[str, tuple[int, np.dtype, tuple[int, int, int]]] = {}

  def layout(self, path: str) -> tuple[int, np.dtype, tuple[int, int, int]]:
    """(byte offset of the data, dtype, (N, H, W)) of the stack at `path`."""
    if path not in self._layouts:
      mrc = _open_mrc(path, mmap=True)
      try:
        data = mrc.data
        if data is None or data.ndim not in (2, 3):
          raise InputError(f"{path}: expected a stack of 2D images, got data of shape "
                           f"{None if data is None else data.shape}")
        if np.iscomplexobj(data):
          raise InputError(f"{path}: complex-valued MRC data, expected real images")
        shape = (1, *data.shape) if data.ndim == 2 else tuple(data.shape)
        self._layouts[path] = (int(mrc.header.nbytes) + int(mrc.header.nsymbt), data.dtype, shape)
      finally:
        mrc.close()
    return self._layouts[path]

  def read(self, path: str, indices) -> np.ndarray:
    """Images `indices` (0-based, any order) of the stack at `path` as (n, H, W) float32."""
    offset, dtype, shape = self.layout(path)
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) and (indices.min() < 0 or indices.max() >= shape[0]):
      bad = int(indices[(indices < 0) | (indices >= shape[0])][0])
      raise InputError(f"{path}: image index {bad + 1} out of range ({shape[0]} images)")
    if len(indices) == 0:
      return np.empty((0, *shape[1:]), np.float32)
    lo, hi = int(indices.min()), int(indices.max()) + 1
    image_bytes = shape[1] * shape[2] * dtype.itemsize
    mapped = np.memmap(path, dtype=dtype, mode="r", offset=offset + lo * image_bytes, shape=(hi - lo, *shape[1:]))
    try:
      if hi - lo == len(indices) and np.all(np.diff(indices) == 1):
        out = np.array(mapped, dtype=np.float32)
      else:
        out = np.array(mapped[indices - lo], dtype=np.float32)
    finally:
      del mapped  # unmaps: the pages read leave this process's resident set
    return out


def read_volume(path: str, pixel_size: float | None = None) -> tuple[np.ndarray, float]:
  """Reads a cubic 3D map; returns (D, D, D) float32 and its voxel size in Å.

  `pixel_size` overrides the header; a header voxel size of 0 without it is an error.
  """
  mrc = _open_mrc(path, mmap=False)
  try:
    data = np.asarray(mrc.data, dtype=np.float32)
    header_size = float(mrc.voxel_size.x)
    ispg = int(mrc.header.ispg)
  finally:
    mrc.close()
  if data.ndim != 3 or data.shape[0] == 1:
    raise InputError(f"{path}: expected a 3D volume, got data of shape {data.shape}")
  if (ispg == 0 and not (data.shape[0] == data.shape[1] == data.shape[2])) or path_is_stack_name(path):
    raise InputError(f"{path}: is an image stack {data.shape}, expected a 3D volume")
  if not (data.shape[0] == data.shape[1] == data.shape[2]):
    raise InputError(f"{path}: expected a cubic volume, got shape {data.shape}")
  if not np.isfinite(data).all():
    raise InputError(f"{path}: volume contains NaN or Inf values")
  size = float(pixel_size) if pixel_size else header_size
  if size <= 0:
    raise InputError(f"{path}: header voxel size is 0; pass --config.pixel_size=Å")
  return data, size


# ---------------------------------------------------------------------------- STAR


@dataclass
class ParticleStar:
  """A RELION STAR particle set: optics and particles tables, and where each image lives.

  `stack_paths[i]` (absolute) and `indices[i]` (0-based) locate particle i's image.
  RELION 3.0 files (no optics block) get a synthesised single optics group.
  """

  path: str
  optics: pd.DataFrame
  particles: pd.DataFrame
  stack_paths: list[str]
  indices: np.ndarray
  is_relion30: bool = False

  def __len__(self):
    return len(self.particles)

  def pixel_size(self) -> float:
    """Pixel size (Å) of the first optics group (`data.relion.pixel_size_of`)."""
    from cryojax_denoise.data.relion import pixel_size_of

    return pixel_size_of(self.optics.iloc[0], self.path)

  def optics_for_particles(self) -> pd.DataFrame:
    """Optics columns broadcast to one row per particle (joined on rlnOpticsGroup)."""
    if "rlnOpticsGroup" in self.particles.columns and "rlnOpticsGroup" in self.optics.columns:
      merged = self.particles[["rlnOpticsGroup"]].merge(self.optics, on="rlnOpticsGroup", how="left")
      return merged
    import pandas as pd

    return pd.concat([self.optics.iloc[[0]]] * len(self.particles), ignore_index=True)


def read_star(path: str, required: tuple[str, ...] = ("rlnImageName",), check_files: bool = True) -> ParticleStar:
  """Reads a RELION 3.0/3.1 particle STAR file and resolves `rlnImageName` (`000001@stack.mrcs`)
  relative to the STAR file's folder (or, failing that, a folder above it: RELION's project folder),
  checking that every stack exists and every index is in range (`check_files`)."""
  check_input_file(path, "STAR file")
  import pandas as pd
  import starfile

  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      blocks = starfile.read(path, always_dict=True)
  except Exception as e:  # noqa: BLE001
    raise InputError(f"{path}: not a readable STAR file ({type(e).__name__}: {e})") from None
  if not blocks:
    raise InputError(f"{path}: STAR file holds no data blocks")
  optics = blocks.get("optics")
  particles = blocks.get("particles")
  is30 = False
  if particles is None:
    tables = [v for v in blocks.values() if isinstance(v, pd.DataFrame)]
    if len(tables) == 1 and optics is None:
      particles, is30 = tables[0], True
    else:
      raise InputError(f"{path}: no data_particles block (found: {', '.join(blocks)})")
  if not isinstance(particles, pd.DataFrame) or len(particles) == 0:
    raise InputError(f"{path}: particles block is empty")
  if optics is None:
    is30 = True
    cols = [c for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnPixelSize",
                        "rlnDetectorPixelSize", "rlnMagnification", "rlnImagePixelSize") if c in particles.columns]
    optics = particles[cols].iloc[[0]].reset_index(drop=True)
    optics.insert(0, "rlnOpticsGroup", 1)
    if "rlnImagePixelSize" not in optics.columns:  # RELION 3.0: from the detector pixel and magnification
      from cryojax_denoise.data.relion import pixel_size_of

      try:
        optics["rlnImagePixelSize"] = pixel_size_of(optics.iloc[0], path)
      except InputError:
        pass  # no pixel size in the file: callers fall back to the stack header
  elif isinstance(optics, dict):
    optics = pd.DataFrame([optics])
  missing = [c for c in required if c not in particles.columns]
  if missing:
    raise InputError(f"{path}: missing required column(s) {', '.join(missing)}")
  base = os.path.dirname(os.path.abspath(path))
  stack_paths, indices, resolved = [], [], {}
  for row, name in enumerate(particles["rlnImageName"].astype(str)):
    if "@" in name:
      idx, stack = name.split("@", 1)
      try:
        i = int(idx) - 1
      except ValueError:
        raise InputError(f"{path}: row {row + 1}: bad rlnImageName {name!r}") from None
    else:
      i, stack = 0, name
    stack_paths.append(_resolve_stack(stack, base, resolved))
    indices.append(i)
  star = ParticleStar(path, optics.reset_index(drop=True), particles.reset_index(drop=True), stack_paths,
                      np.asarray(indices, dtype=np.int64), is30)
  if check_files:
    _check_star_images(star)
  return star


def _resolve_stack(stack: str, base: str, cache: dict) -> str:
  """Absolute path of a stack named in rlnImageName: relative to the STAR file's folder `base`;
  when not there, relative to the folders above it or the working directory (RELION writes
  paths relative to its project folder, e.g. Extract/job012/... from Refine3D/job050/run_data.star).
  A stack found nowhere keeps the path beside the STAR file (the error names it)."""
  if os.path.isabs(stack):
    return stack
  if stack not in cache:
    first = os.path.join(base, stack)
    candidates = [first]
    folder = base
    while os.path.dirname(folder) != folder:
      folder = os.path.dirname(folder)
      candidates.append(os.path.join(folder, stack))
    candidates.append(os.path.abspath(stack))
    cache[stack] = next((c for c in candidates if os.path.exists(c)), first)
  return cache[stack]


def _check_star_images(star: ParticleStar) -> None:
  counts: dict[str, int] = {}
  for row, (stack, i) in enumerate(zip(star.stack_paths, star.indices)):
    if stack not in counts:
      if not os.path.exists(stack):
        raise InputError(f"{star.path}: row {row + 1}: image stack {stack} not found")
      counts[stack] = len(read_stack(stack, mmap=True, check_finite=False, allow_volume=True))
    if i < 0 or i >= counts[stack]:
      raise InputError(f"{star.path}: row {row + 1}: image index {i + 1} out of range for {stack} "
                       f"({counts[stack]} images)")


def star_images(star: ParticleStar, rows=None) -> np.ndarray:
  """The particle images of `rows` (default all) as (n, H, W) float32, in row order."""
  rows = np.arange(len(star)) if rows is None else np.asarray(rows)
  out = None
  cache: dict[str, Stack] = {}
  for j, r in enumerate(rows):
    stack = star.stack_paths[r]
    if stack not in cache:
      cache[stack] = read_stack(stack, mmap=True, check_finite=False, allow_volume=True)
    img = np.asarray(cache[stack].data[star.indices[r]], dtype=np.float32)
    if out is None:
      out = np.empty((len(rows), *img.shape), np.float32)
    if img.shape != out.shape[1:]:
      raise InputError(f"{star.path}: row {r + 1}: image shape {img.shape} differs from {out.shape[1:]}")
    out[j] = img
  if out is not None and not np.isfinite(out).all():
    bad = rows[int(np.argwhere(~np.isfinite(out.reshape(len(out), -1)).all(axis=1))[0][0])]
    raise InputError(f"{star.path}: row {bad + 1}: image contains NaN or Inf values")
  return out


def _star_float(value) -> str:
  """Shortest text that reads back as the same float64 (RELION and starfile parse it)."""
  return repr(float(value))


def write_star(path: str, optics: pd.DataFrame | None, particles: pd.DataFrame) -> None:
  """Writes a RELION 3.1 STAR file (data_optics + data_particles) atomically.

  With `optics=None` only the particles block is written (the RELION 3.0 layout). Floats are
  written losslessly (not rounded to 6 decimals), so columns read back unchanged.
  """
  import starfile

  blocks = {"particles": particles} if optics is None else {"optics": optics, "particles": particles}
  with atomic_path(path) as tmp:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      starfile.write(blocks, tmp, float_format=_star_float, overwrite=True)
