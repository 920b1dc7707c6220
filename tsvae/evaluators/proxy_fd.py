"""The proxy FD: Fréchet distance in the features of the project's own classifier.

Not comparable to published FID; a fast, always-available signal (docs/evaluation.md).
"""

from typing import Any, Iterator, List, Tuple

from tsvae.evaluators import common
from tsvae.metrics import classifier as classifier_lib
from tsvae.metrics import frechet


def _scores(inputs: common.EvalInputs) -> List[Tuple[str, Any]]:
  c, e = inputs.config, inputs.config.eval
  clf = classifier_lib.get_classifier(
      inputs.builder, c.dataset, cache_dir=inputs.cache_dir,
      seed=int(e.get('classifier_seed', 0)), epochs=int(e.get('classifier_epochs', -1)),
      batch_size=inputs.batch_size, write=inputs.write,
      test_data=classifier_lib.load_labeled(inputs.builder, 'test', c.dataset))
  reference = frechet.gaussian_stats(clf.features(inputs.test_uint8))

  def distance(images):
    return frechet.frechet_distance_from_stats(frechet.gaussian_stats(clf.features(images)),
                                               reference)

  scores = [(f'proxy_fd_{name}', distance(images)) for name, images in inputs.generated.items()]
  scores += [(f'proxy_fd_{name}', common.Unavailable(reason))
             for name, reason in inputs.missing.items()]
  # The metric's floor: real training images against the same test images.
  scores.append(('proxy_fd_train', distance(inputs.train_uint8)))
  return scores + [
      ('classifier_test_accuracy', clf.test_accuracy),
      ('classifier_cache_key', clf.cache_key),
      ('classifier', {k: clf.meta.get(k) for k in (
          'recipe', 'seed', 'num_train', 'num_test', 'train_time_s', 'train_accuracy',
          'test_accuracy', 'created')}),
      ('proxy_unavailable_reason', None)]


def proxy_fd(inputs: common.EvalInputs) -> Iterator[Tuple[str, Any]]:
  """proxy_fd_<set> of every sample set and of real training images (the floor)."""
  try:
    yield from _scores(inputs)
  except classifier_lib.ClassifierUnavailable as err:
    for name in common.SAMPLE_SETS + ('train',):
      yield f'proxy_fd_{name}', common.Unavailable(inputs.missing.get(name, str(err)))
    yield 'classifier_test_accuracy', common.Unavailable(str(err))
    yield 'classifier_cache_key', None
    yield 'proxy_unavailable_reason', str(err)
