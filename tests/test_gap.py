"""pra_jax.gap's pieces that need no trained model: the same-class partners of the sensitivity
control, the held-out subset and the config of each input kind (the study runs the rest)."""

import numpy as np
import pytest

import factories as F
from pra_jax import rollout
from pra_jax.studies import rollout_gap


def test_every_image_gets_another_image_of_its_class():
  labels = np.array([3, 1, 3, 1, 1, 3, 0, 0])
  partner = rollout_gap.same_class_partners(labels)
  assert (labels[partner] == labels).all() and (partner != np.arange(len(labels))).all()
  assert sorted(partner.tolist()) == list(range(len(labels)))   # A permutation: each used once.
  with pytest.raises(ValueError, match="class 2 has 1"):
    rollout_gap.same_class_partners(np.array([0, 0, 2]))


def test_held_out_subset_keeps_every_class_paired():
  images, labels = rollout_gap.held_out(F.tiny_config(), 10)
  counts = np.bincount(labels, minlength=10)
  assert (counts == 2).all() and len(images) == 20
  rollout_gap.same_class_partners(labels)
  full_images, full_labels = rollout_gap.held_out(F.tiny_config())
  assert len(full_labels) == 297 and full_images.shape[1:] == (16, 16, 1)


def test_kinds_are_rollout_modes_at_the_inference_end_of_the_coupling():
  config = F.tiny_config(**{"rollout.mode": "pra"})
  assert set(rollout_gap.KINDS) == set(rollout.MODES) | {"other"}
  for kind in rollout_gap.KINDS:
    c = rollout_gap.kind_config(config, kind, num_steps=3, couple_t0=0.0)
    assert c.rollout.mode == ("teacher" if kind == "other" else kind)
    assert c.rollout.head_sample_steps == 3 and c.rollout.couple_t0 == 0.0
    hash(c)   # Static under jit.
  assert config.rollout.mode == "pra"   # The run's own config is left alone.


def test_bad_kinds_and_state_kinds_on_a_direct_pixel_model_are_refused():
  config = F.tiny_config()
  images, labels = rollout_gap.held_out(config, 10)
  with pytest.raises(ValueError, match="gap kinds must be among"):
    rollout_gap.measure(None, images, labels, None, config, kinds=("own",))
  direct = F.tiny_config(**{"model.direct_pixel": True})
  with pytest.raises(ValueError, match="direct_pixel=True has no state encoder/decoder"):
    rollout_gap.measure(None, images, labels, None, direct, kinds=("pra",))
