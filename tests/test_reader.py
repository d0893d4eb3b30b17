"""The tf.data reader: fixed shapes, epochs that cover every example once in a
seeded order, exact resume from a position, per-process shards, and the
documented behaviour when a run resumes on another process count."""
import itertools
import logging

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mind_jax.data import records
from mind_jax.data.reader import RecordReader, check_tokenizer, global_batch
from tests.test_records import NUM_EXAMPLES, SPEC, build

K, T, E = SPEC.num_perspectives, SPEC.max_len, SPEC.embed_dim


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("records")
  build(out, extra=dict(tokenizer=dict(name="bpe-512", fingerprint="f" * 64)))
  return str(out)


def take(reader, n, start=0):
  return list(itertools.islice(reader.iterator(start), n))


def indices(batches):
  return np.concatenate([b["example_index"] for b in batches])


def merged(per_process):
  """Global batches from each simulated process's local batches (process-major rows)."""
  return [{k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
          for parts in zip(*per_process)]


def test_fixed_shapes_and_dtypes(data_dir):
  batch = take(RecordReader(data_dir, batch_size=10, seed=0), 1)[0]
  expected = dict(example_index=((10,), np.int32), input_ids=((10, K, T), np.int32),
                  attention_mask=((10, K, T), np.int32), loss_mask=((10, K, T), np.int32),
                  answer_mask=((10, K, T), np.int32), present=((10, K), np.float32),
                  question_embedding=((10, E), np.float32),
                  rationale_embedding=((10, K, E), np.float32))
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected


def test_every_example_once_per_epoch_in_seeded_orders(data_dir):
  reader = RecordReader(data_dir, batch_size=10, seed=0)
  assert reader.batches_per_epoch == 5
  three_epochs = indices(take(reader, 15)).reshape(3, NUM_EXAMPLES)
  for epoch in three_epochs:
    assert sorted(epoch) == list(range(NUM_EXAMPLES))
  assert not np.array_equal(three_epochs[0], three_epochs[1])
  assert not np.array_equal(three_epochs[1], three_epochs[2])
  again = indices(take(RecordReader(data_dir, batch_size=10, seed=0), 15))
  np.testing.assert_array_equal(again, three_epochs.ravel())
  other_seed = indices(take(RecordReader(data_dir, batch_size=10, seed=1), 5))
  assert not np.array_equal(other_seed, three_epochs[0])


def test_drop_remainder_is_logged_and_never_repeats(data_dir, caplog):
  with caplog.at_level(logging.INFO):
    reader = RecordReader(data_dir, batch_size=8, seed=0)
  assert reader.batches_per_epoch == 6
  assert "leaves out 2 records per epoch" in caplog.text
  for epoch in indices(take(reader, 12)).reshape(2, 48):
    assert len(set(epoch)) == 48


def test_resume_equals_uninterrupted_run_across_epoch_boundaries(data_dir):
  reader = RecordReader(data_dir, batch_size=10, seed=3)
  straight = take(reader, 13)
  for position in (1, 4, 5, 7, 11):  # 5 and 10 are epoch boundaries
    resumed = take(RecordReader(data_dir, batch_size=10, seed=3), 13 - position, position)
    for a, b in zip(straight[position:], resumed, strict=True):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{position} {key}")


def test_two_processes_read_disjoint_shards_covering_the_data(data_dir):
  readers = [RecordReader(data_dir, batch_size=10, seed=0, process_index=p, process_count=2)
             for p in range(2)]
  assert readers[0].files == ["records-00000-of-00004.tfrecord",
                              "records-00002-of-00004.tfrecord"]
  assert readers[1].files == ["records-00001-of-00004.tfrecord",
                              "records-00003-of-00004.tfrecord"]
  assert readers[0].batches_per_epoch == readers[1].batches_per_epoch == 5
  seen = [indices(take(r, 5)) for r in readers]
  assert all(len(s) == 25 for s in seen) and not set(seen[0]) & set(seen[1])
  assert sorted(np.concatenate(seen)) == list(range(NUM_EXAMPLES))
  assert set(seen[0] % 4) == {0, 2} and set(seen[1] % 4) == {1, 3}


def test_resume_on_another_process_count_keeps_position_and_later_epochs(data_dir):
  """What the reader docstring claims: position and epoch coverage are kept,
  batch contents are not (they depend on which process reads which shard)."""
  one = take(RecordReader(data_dir, batch_size=10, seed=0), 15)
  position = 7  # killed inside epoch 1 on one process, resumed on two
  two = merged([take(RecordReader(data_dir, batch_size=10, seed=0, process_index=p,
                                  process_count=2), 15 - position, position)
                for p in range(2)])
  # Both layouts have 5 batches per epoch here, so epoch 2 starts at the same
  # position and, like every later epoch, covers every example once.
  epoch2 = indices(two[10 - position:15 - position])
  assert sorted(epoch2) == list(range(NUM_EXAMPLES))
  assert not np.array_equal(epoch2, indices(one[10:15]))  # other batch contents
  # The resumed epoch 1 runs its last 3 batches in the new layout: repeats are possible.
  assert len(indices(two[:10 - position])) == 30
  # Resuming on the same two processes is exact again.
  again = merged([take(RecordReader(data_dir, batch_size=10, seed=0, process_index=p,
                                    process_count=2), 3, position + 5)
                  for p in range(2)])
  np.testing.assert_array_equal(indices(again), indices(two[5:8]))


def test_refuses_what_it_cannot_read(data_dir, tmp_path):
  with pytest.raises(ValueError, match="4 shards, fewer than the 5 processes"):
    RecordReader(data_dir, batch_size=10, seed=0, process_index=0, process_count=5)
  with pytest.raises(ValueError, match="does not divide over 3 processes"):
    RecordReader(data_dir, batch_size=10, seed=0, process_index=0, process_count=3)
  with pytest.raises(ValueError, match="fewer than its batch"):
    RecordReader(data_dir, batch_size=64, seed=0)
  with pytest.raises(FileNotFoundError, match="manifest.json"):
    RecordReader(str(tmp_path), batch_size=10, seed=0)


def test_tokenizer_mismatch_names_both(data_dir):
  manifest = records.read_manifest(data_dir)
  check_tokenizer(manifest, "f" * 64, "bpe-512")  # the same tokenizer passes
  check_tokenizer(manifest, "f" * 64, "/another/path/to/bpe")  # names may differ
  with pytest.raises(ValueError) as info:
    check_tokenizer(manifest, "0" * 64, "Qwen/Qwen2.5-0.5B")
  for part in ("bpe-512", "f" * 64, "Qwen/Qwen2.5-0.5B", "0" * 64):
    assert part in str(info.value)


def test_global_batch_places_rows_on_the_mesh(data_dir):
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  local = take(RecordReader(data_dir, batch_size=8, seed=0), 1)[0]
  arrays = global_batch(local, lambda key: NamedSharding(mesh, P("data")))
  assert set(arrays) == set(local)
  for key, value in local.items():
    assert arrays[key].shape == value.shape
    np.testing.assert_array_equal(np.asarray(arrays[key]), value)
  assert arrays["input_ids"].sharding.spec == P("data")


def test_text_fields_only_when_asked(data_dir):
  batch = take(RecordReader(data_dir, batch_size=10, seed=0, with_text=True), 1)[0]
  assert batch["rationales"].shape == (10, K) and batch["question_id"].shape == (10,)
  mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  assert "rationales" not in global_batch(batch, NamedSharding(mesh, P()))


def test_uneven_process_shares_shrink_the_epoch(data_dir, caplog):
  """4 shards over 3 processes: process 0 reads two, so batches_per_epoch follows
  the smaller processes and changes with the process count (see the docstring)."""
  assert RecordReader(data_dir, batch_size=12, seed=0).batches_per_epoch == 4
  with caplog.at_level(logging.INFO):
    readers = [RecordReader(data_dir, batch_size=12, seed=0, process_index=p, process_count=3)
               for p in range(3)]
  assert {r.batches_per_epoch for r in readers} == {3}
  assert "4 shards over 3 processes" in caplog.text
  assert "leaves out 14 records per epoch" in caplog.text
  epoch = indices(merged([take(r, 3) for r in readers]))
  assert len(set(epoch)) == 36
