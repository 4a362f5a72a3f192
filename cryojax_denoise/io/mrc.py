"""MRC stacks and maps: reading with checks (truncation, NaN/Inf, shape), writing atomically.

Every reader raises `InputError` with the file and the problem; every writer goes through
`atomic.atomic_path`, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import mrcfile
import numpy as np

from cryojax_denoise.errors import InputError
from cryojax_denoise.io.atomic import atomic_path


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
    self._min = min(self._min, float(images.min()))
    self._max = max(self._max, float(images.max()))
    for image in images:  # float64 sums, one image at a time (no float64 copy of the batch)
      flat = image.reshape(-1).astype(np.float64)
      self._sum += float(flat.sum())
      self._sumsq += float(flat @ flat)
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
