"""tfds builders of the download ("online") route that add the authors' preprocessing.

`tsvae_cifar10_jpeg_q75`: the stock tfds `cifar10` (downloaded and prepared by tfds in the same
data_dir), every train and test image round-tripped through JPEG as the authors' `preprocess.py`
does (`scipy.misc.imsave(.jpg)` then `imread(mode='RGB')`: PIL at its default quality 75 and its
default chroma subsampling, read back with PIL). `jpeg_round_trip` is that round trip. The images
are stored losslessly (PNG) like those of the offline builder `tsvae_cifar10`, whose zip holds
the same JPEGs, so both routes give byte-identical arrays for the same images
(tests/input_pipeline_test.py). Stored in the stock builder's example order.
"""

import io

import numpy as np
import tensorflow_datasets as tfds

from tsvae.datasets.errors import DataError
from tsvae.datasets.local_builders import CIFAR10_CLASSES
from tsvae.datasets.local_builders import cifar10_info_fields

#: PIL's default JPEG quality, what `scipy.misc.imsave` wrote.
JPEG_QUALITY = 75
STOCK_CIFAR10 = 'cifar10'


def jpeg_round_trip(image: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] → JPEG (PIL, quality 75, default subsampling) → PIL decode → uint8."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'jpeg_round_trip takes uint8 RGB [H, W, 3], got {image.dtype} '
                     f'{image.shape}.')
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='JPEG', quality=JPEG_QUALITY)
  buf.seek(0)
  with Image.open(buf) as im:
    return np.asarray(im.convert('RGB'), dtype=np.uint8)


class TsvaeCifar10JpegQ75(tfds.core.GeneratorBasedBuilder):
  """Stock tfds CIFAR-10 through the authors' JPEG q75 round trip (see the module doc)."""

  name = 'tsvae_cifar10_jpeg_q75'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Stock cifar10 3.x, JPEG q75 round trip (PIL).'}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=('CIFAR-10 from the stock tfds builder, each image round-tripped through '
                     f'JPEG at PIL quality {JPEG_QUALITY} (the Two-Stage VAE authors\' '
                     'preprocess.py), stored losslessly.'),
        **cifar10_info_fields())

  def _stock_builder(self):
    stock = tfds.builder(STOCK_CIFAR10, data_dir=self.data_dir_root)
    stock.download_and_prepare()
    names = stock.info.features['label'].names
    if list(names) != list(CIFAR10_CLASSES):
      raise DataError(f'The stock tfds {STOCK_CIFAR10!r} labels are {names}; expected '
                      f'{list(CIFAR10_CLASSES)}.')
    return stock

  def _split_generators(self, dl_manager):
    del dl_manager  # The stock builder downloads.
    stock = self._stock_builder()
    return {split: self._generate_examples(stock, split) for split in ('train', 'test')}

  def _generate_examples(self, stock, split):
    ds = stock.as_dataset(split=split, shuffle_files=False,
                          read_config=tfds.ReadConfig(try_autocache=False,
                                                      interleave_cycle_length=1))
    for i, example in enumerate(tfds.as_numpy(ds)):
      yield i, {'image': jpeg_round_trip(example['image']), 'label': int(example['label'])}


# Datasets whose download route goes through one of these builders instead of the stock one.
ONLINE_BUILDERS = {'cifar10': TsvaeCifar10JpegQ75}
