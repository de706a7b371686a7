"""Image-text shards in three formats: good pairs come out decoded and tokenized, bad ones are
skipped and counted by reason, never raised; the reader resumes and splits shards by host."""
import io
import itertools
import tarfile

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from diffdis_jax.data import captions
from diffdis_jax.data.digits_captions import write_tokenizer_files


def _png(seed, size=(20, 12)) -> bytes:
  buf = io.BytesIO()
  rgb = np.random.default_rng(seed).integers(0, 256, size[::-1] + (3,), dtype=np.uint8)
  Image.fromarray(rgb).save(buf, 'PNG')
  return buf.getvalue()


GOOD = [('the number seven', _png(1)), ('a handwritten digit two', _png(2, (9, 30))),
        ('an image of the digit one', _png(3))]


def _example(fields) -> bytes:
  feats = {}
  for key, value in fields.items():
    feats[key] = (tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
                  if isinstance(value, int) else
                  tf.train.Feature(bytes_list=tf.train.BytesList(value=[value])))
  return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def _example_records(tag):
  good = [_example({'image': img, 'caption': f'{tag} {cap}'.encode()}) for cap, img in GOOD]
  bad = [_example({'image': b'not an image', 'caption': b'a caption'}),        # undecodable
         _example({'image': _png(4), 'caption': b'   '}),                     # empty caption
         _example({'image': _png(5), 'caption': 7}),                          # wrong type
         _example({'image': _png(6)}),                                        # missing field
         b'\x00garbage that is no proto\xff']                                 # unparsable
  return [good[0], bad[0], bad[1], good[1], bad[2], bad[3], bad[4], good[2]]


def _write_tfrecord(path, records):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for r in records:
      writer.write(r)


def _write_array_record(path, records):
  from array_record.python.array_record_module import ArrayRecordWriter
  writer = ArrayRecordWriter(str(path), 'group_size:1')
  for r in records:
    writer.write(r)
  writer.close()


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _write_tar(path, tag):
  with tarfile.open(path, 'w') as tar:
    _add(tar, '000.png', GOOD[0][1]); _add(tar, '000.txt', f'{tag} {GOOD[0][0]}'.encode())
    _add(tar, '001.jpg', b'\xff\xd8 broken jpeg'); _add(tar, '001.txt', b'a caption')
    _add(tar, '002.png', _png(7)); _add(tar, '002.txt', b'')                  # empty caption
    _add(tar, '003.png', GOOD[1][1]); _add(tar, '003.txt', f'{tag} {GOOD[1][0]}'.encode())
    _add(tar, '004.png', _png(8))                                             # no caption
    _add(tar, '005.png', _png(9)); _add(tar, '005.txt', b'\xff\xfe not utf-8')
    _add(tar, '006.png', GOOD[2][1]); _add(tar, '006.txt', f'{tag} {GOOD[2][0]}'.encode())


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
  root = tmp_path_factory.mktemp('captions')
  paths = {'tfrecord': root / 'a.tfrecord', 'array_record': root / 'b.array_record',
           'tar': root / 'c.tar'}
  _write_tfrecord(paths['tfrecord'], _example_records('tfrecord'))
  _write_array_record(paths['array_record'], _example_records('array_record'))
  _write_tar(paths['tar'], 'tar')
  return root, {k: str(v) for k, v in paths.items()}


def _read_all(paths, **kwargs):
  records = captions.CaptionRecords(paths, image_size=8, epochs=1, **kwargs)
  return list(records), records


@pytest.mark.parametrize('fmt', ['tfrecord', 'array_record', 'tar'])
def test_good_pairs_out_bad_ones_counted(shards, fmt):
  _, paths = shards
  out, records = _read_all([paths[fmt]])
  assert [e['caption'] for e in out] == [f'{fmt} {cap}' for cap, _ in GOOD]
  for e, (_, png) in zip(out, GOOD):
    assert e['image'].shape == (8, 8, 3) and e['image'].dtype == np.float32
    assert -1.0 <= e['image'].min() and e['image'].max() <= 1.0
    expect = captions.center_crop_arr(Image.open(io.BytesIO(png)), 8) / 127.5 - 1.0
    np.testing.assert_allclose(e['image'], expect, atol=1e-6)
  want = ({'undecodable_image': 1, 'empty_caption': 2, 'wrong_type': 1} if fmt == 'tar' else
          {'undecodable_image': 1, 'empty_caption': 1, 'wrong_type': 2,
           'unparsable_record': 1})
  assert dict(records.skipped) == want and records.skipped_records == sum(want.values())


def test_truncated_shards_keep_what_precedes_the_cut(shards):
  root, paths = shards
  cut = {}
  for fmt in ('tfrecord', 'tar'):
    data = open(paths[fmt], 'rb').read()
    cut[fmt] = str(root / f'cut_{fmt}.{"tfrecord" if fmt == "tfrecord" else "tar"}')
    with open(cut[fmt], 'wb') as f:
      f.write(data[:len(data) * 2 // 3])
  out, records = _read_all(list(cut.values()))
  assert records.skipped['truncated_shard'] == 2
  assert {e['caption'] for e in out} >= {'tfrecord the number seven', 'tar the number seven'}


def test_tokenized_with_a_clip_tokenizer(shards, tmp_path):
  _, paths = shards
  tokenizer = captions.load_tokenizer(write_tokenizer_files(
      str(tmp_path / 'tok'), 'tar the number seven a handwritten digit two an image of one'
      .split()))
  out, _ = _read_all([paths['tar']], tokenizer=tokenizer, max_length=10)
  ids, mask = out[0]['input_ids'], out[0]['attention_mask']
  assert ids.shape == mask.shape == (10,)
  words = tokenizer.convert_ids_to_tokens([int(i) for i in ids[1:mask.sum() - 1]])
  assert [w.replace('</w>', '') for w in words] == 'tar the number seven'.split()


def test_resume_and_hosts(shards):
  _, paths = shards
  every = sorted(paths.values())
  uninterrupted = captions.CaptionRecords(every, image_size=8, seed=5)
  reference = [e['caption'] for e in itertools.islice(uninterrupted, 14)]
  assert sorted(reference[:9]) == sorted(f'{f} {c}' for f in paths for c, _ in GOOD)
  first = captions.CaptionRecords(every, image_size=8, seed=5)
  it = iter(first)
  head = [next(it)['caption'] for _ in range(4)]
  resumed = captions.CaptionRecords(every, image_size=8, seed=5)
  resumed.set_state(first.get_state())
  assert head + [e['caption'] for e in itertools.islice(resumed, 10)] == reference
  assert 0 < first.skipped_records < resumed.skipped_records  # counts carry over
  assert resumed.skipped == uninterrupted.skipped
  hosts = [{e['caption'] for e in captions.CaptionRecords(every, image_size=8, epochs=1,
                                                          process_index=p, process_count=2)}
           for p in (0, 1)]
  assert not hosts[0] & hosts[1] and len(hosts[0] | hosts[1]) == 9


def test_batches_stack_examples(shards):
  _, paths = shards
  records = captions.CaptionRecords([paths['tar']], image_size=8)
  batches = captions.CaptionBatches(records, 4)
  batch = next(batches)
  assert batch['image'].shape == (4, 8, 8, 3) and len(batch['caption']) == 4
  state = batches.get_state()
  expected = [next(batches)['caption'] for _ in range(2)]
  resumed = captions.CaptionBatches(captions.CaptionRecords([paths['tar']], image_size=8), 4,
                                    keys=('caption',))
  resumed.set_state(state)
  assert [next(resumed)['caption'] for _ in range(2)] == expected
  assert set(next(resumed)) == {'caption'}


def test_captioned_digits_read_through_the_same_interface(tmp_path):
  from diffdis_jax.data import digits_captions as cd
  paths = cd.write_caption_shards(str(tmp_path), 'test', size=8, seed=1, per_shard=100)
  assert len(paths) == 3  # 297 test digits
  out = []
  for path in paths:  # one shard at a time: the records come in the order written
    records = captions.CaptionRecords([path], image_size=8, mode='L', epochs=1)
    out += list(records)
    assert records.skipped_records == 0
  memory = cd.load_captioned_digits('test', size=8, seed=1)
  assert [e['caption'] for e in out] == list(memory['caption'])
  images = np.stack([e['image'] for e in out])
  assert images.shape == memory['image'].shape == (297, 8, 8, 1)
  np.testing.assert_allclose(images, memory['image'], atol=0.5 / 127.5 + 1e-6)  # 8-bit PNG


def test_state_goes_through_grains_orbax_handler(shards, tmp_path):
  import grain
  import orbax.checkpoint as ocp
  _, paths = shards
  records = captions.CaptionRecords(sorted(paths.values()), image_size=8, seed=2)
  it = iter(records)
  for _ in range(5):
    next(it)
  checkpointer = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
  checkpointer.save(tmp_path / 'ckpt', args=grain.checkpoint.CheckpointSave(records))
  expected = [next(it)['caption'] for _ in range(3)]
  restored = captions.CaptionRecords(sorted(paths.values()), image_size=8, seed=2)
  checkpointer.restore(tmp_path / 'ckpt', args=grain.checkpoint.CheckpointRestore(restored))
  assert [e['caption'] for e in itertools.islice(restored, 3)] == expected
