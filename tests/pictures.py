"""Checks that a written figure is a real picture: a PNG, not tiny, not a blank canvas."""
from matplotlib import image as mpl_image

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def check_png(path) -> None:
  with open(path, 'rb') as f:
    assert f.read(8) == PNG_MAGIC
  pixels = mpl_image.imread(path)
  assert pixels.shape[0] > 100 and pixels.shape[1] > 100
  assert pixels.std() > 0.01  # Not a blank canvas.
