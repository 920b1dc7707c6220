"""The proxy classifier (tsvae.metrics.classifier): trained once, cached, resumable."""

import json
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from tsvae import input_pipeline
from tsvae.metrics import classifier as classifier_lib


def test_proxy_classifier_is_trained_once_then_cached(tmp_path, monkeypatch):
  with tfds.testing.mock_data(num_examples=48):
    builder = input_pipeline.get_builder('mnist')
    clf = classifier_lib.get_classifier(builder, 'mnist', cache_dir=str(tmp_path), epochs=1,
                                        batch_size=16)
    key = clf.cache_key
    assert key.startswith('mnist_seed0/')
    meta = json.loads((tmp_path / 'classifiers' / key / 'classifier.json').read_text())
    assert meta['num_train'] == 48 and meta['recipe']['epochs'] == 1
    assert 0.0 <= meta['test_accuracy'] <= 1.0
    images, _ = classifier_lib.load_labeled(builder, 'test', 'mnist')
    feats = clf.features(images[:20])
    assert feats.shape == (20, classifier_lib.RECIPES['mnist'].dense)
    np.testing.assert_allclose(clf.features(images[:20].astype(np.float32) / 255.0), feats,
                               rtol=1e-5, atol=1e-5)

    def no_training(*args, **kwargs):
      raise AssertionError('trained again instead of using the cache')

    monkeypatch.setattr(classifier_lib, 'train', no_training)
    again = classifier_lib.get_classifier(builder, 'mnist', cache_dir=str(tmp_path), epochs=1,
                                          batch_size=16)
    assert again.cache_key == key and again.test_accuracy == clf.test_accuracy
    np.testing.assert_allclose(again.features(images[:20]), feats, rtol=1e-6)
    # Only the finished files stay behind.
    assert sorted(os.listdir(tmp_path / 'classifiers' / key)) == ['classifier.json',
                                                                  'params.msgpack']
    # A cache miss says what the entries beside the wanted one differ in.
    recipe2 = classifier_lib.recipe_for('mnist', epochs=2)
    fingerprint = meta['test_fingerprint_sha256']
    key2 = classifier_lib._cache_key(recipe2, 0, fingerprint)
    lines = classifier_lib.other_cached(str(tmp_path), 'mnist', 0, key2, recipe2, fingerprint)
    assert lines == [f"{key.split('/')[1]} (trained): recipe: epochs 1 (wanted 2)"]
    other = classifier_lib.other_cached(str(tmp_path), 'mnist', 0, key2, recipe2, '0' * 64)
    assert 'other test data' in other[0] and 'epochs 1 (wanted 2)' in other[0]
    assert classifier_lib.other_cached(str(tmp_path), 'mnist', 1, key2, recipe2,
                                       fingerprint) == []
    # An unfinished training is described by its training.json; a stray folder is named.
    unfinished = tmp_path / 'classifiers' / 'mnist_seed0' / 'aaaa'
    unfinished.mkdir()
    (unfinished / 'training.json').write_text(json.dumps(
        {'format_version': meta['format_version'], 'recipe': recipe2.to_json(),
         'test_fingerprint_sha256': fingerprint}))
    (tmp_path / 'classifiers' / 'mnist_seed0' / 'zzzz').mkdir()
    lines = classifier_lib.other_cached(str(tmp_path), 'mnist', 0, 'bbbb', recipe2, fingerprint)
    assert lines[0] == 'aaaa (unfinished): same inputs, other key'
    assert lines[2] == 'zzzz: no classifier.json or training.json'
  with pytest.raises(classifier_lib.ClassifierUnavailable, match='celeba'):
    classifier_lib.recipe_for('celeba')


def test_classifier_training_resumes_from_its_epoch_checkpoint(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, 64).astype(np.int32)
  recipe = classifier_lib.Recipe(widths=(4,), dense=8, epochs=2, batch_size=32)
  checkpoint = str(tmp_path / 'training.msgpack')
  full = classifier_lib.train(images, labels, recipe, seed=1, checkpoint_path=checkpoint)
  # The state after epoch 1 is on disk (the last epoch is not written); resume from it.
  resumed = classifier_lib.train(images, labels, recipe, seed=1, checkpoint_path=checkpoint)
  for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  fresh = classifier_lib.train(images, labels, recipe, seed=1)
  for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(fresh)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
