"""FID as the paper computes it (`tsvae.metrics.fid`): every sample set and real training
images (the floor) against the test images; null with the reason when the verified Inception
weights are not available."""

from typing import Any, Iterator, Tuple

from tsvae.evaluators import common
from tsvae.metrics import fid as fid_lib


def fid(inputs: common.EvalInputs) -> Iterator[Tuple[str, Any]]:
  """fid_<set> of every sample set and fid_train, plus the protocol's record."""
  c = inputs.config
  real = fid_lib.RealSet(inputs.test_uint8, c.dataset, 'test', inputs.seed)
  floor = fid_lib.RealSet(inputs.train_uint8, c.dataset, 'train', inputs.seed)
  scored = fid_lib.fid_scores(inputs.generated, real, c.eval, inputs.cache_dir, inputs.write,
                              floor=floor)
  reason = scored['reason']
  for name in common.SAMPLE_SETS + ('train',):
    if name in inputs.missing:
      yield f'fid_{name}', common.Unavailable(inputs.missing[name])
    elif scored['fids'][name] is None:
      yield f'fid_{name}', common.Unavailable(reason)
    else:
      yield f'fid_{name}', scored['fids'][name]
  yield 'fid_unavailable_reason', reason
  yield from ((k, v) for k, v in scored.items() if k not in ('fids', 'reason'))
