"""DiffDis objective: InfoNCE, condition dropout, text queries, where each loss sends gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from diffdis_jax.objectives import diffdis as obj
from diffdis_jax.tasks import TASKS
from diffdis_testlib import CTX_DIM, CTX_LEN, random_params, tiny_batch, tiny_config, tiny_model


def test_registered():
  assert TASKS['diffdis'].objective is obj
  assert not obj.uses_teacher(tiny_config())


def _log_softmax(v):
  v = np.asarray(v, np.float64)
  return v - np.log(np.sum(np.exp(v)))


def test_info_nce_hand_case():
  pred = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 2.0]], np.float32)   # row 3 is normalised
  target = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)
  scale = 2.0
  # cosines by hand: pred rows are (1,0), (.6,.8), (0,1)
  cos = np.array([[1.0, 0.0, -1.0], [0.6, 0.8, -0.6], [0.0, 1.0, 0.0]])
  logits = scale * cos
  i2t = -np.mean([_log_softmax(logits[i])[i] for i in range(3)])
  t2i = -np.mean([_log_softmax(logits[:, j])[j] for j in range(3)])
  loss, acc = obj.info_nce(pred, target, scale)
  np.testing.assert_allclose(loss, (i2t + t2i) / 2, rtol=1e-6)
  assert acc == pytest.approx(2 / 3)  # row 3's best caption is caption 2: a miss
  # two captions of one image are both positives: uniform targets over them
  pos = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], np.float32)
  i2t = -np.mean([np.mean([_log_softmax(logits[i])[j] for j in np.flatnonzero(pos[i])])
                  for i in range(3)])
  t2i = -np.mean([np.mean([_log_softmax(logits[:, j])[i] for i in np.flatnonzero(pos[:, j])])
                  for j in range(3)])
  loss, acc = obj.info_nce(pred, target, scale, jnp.asarray(pos))
  np.testing.assert_allclose(loss, (i2t + t2i) / 2, rtol=1e-6)
  assert acc == pytest.approx(2 / 3)


def test_positive_masks():
  q = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
  np.testing.assert_array_equal(obj.positive_mask('diagonal', q), np.eye(3))
  np.testing.assert_array_equal(obj.positive_mask('same_query', q),
                                [[1, 1, 0], [1, 1, 0], [0, 0, 1]])
  np.testing.assert_array_equal(obj.positive_mask('same_label', q, np.array([4, 5, 4])),
                                [[1, 0, 1], [0, 1, 0], [1, 0, 1]])
  with pytest.raises(ValueError, match='label'):
    obj.positive_mask('same_label', q)


def test_dropout_masks():
  rng = jax.random.PRNGKey(0)
  assert not obj.drop_mask(rng, 1000, 0.0).any()
  assert obj.drop_mask(rng, 1000, 1.0).all()
  assert abs(float(obj.drop_mask(rng, 200_000, 0.1).mean()) - 0.1) < 0.003
  context = np.arange(3 * 2 * 2, dtype=np.float32).reshape(3, 2, 2)
  null = -np.ones((2, 2), np.float32)
  out = np.asarray(obj.drop_context(context, null, np.array([False, True, False])))
  np.testing.assert_array_equal(out[[0, 2]], context[[0, 2]])
  np.testing.assert_array_equal(out[1], null)


def test_text_query_definitions():
  rng = np.random.default_rng(0)
  outputs = {'text_embeds': rng.standard_normal((2, 4)),
             'pooler_output': rng.standard_normal((2, 3)),
             'last_hidden_state': rng.standard_normal((2, 5, 3))}
  unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
  np.testing.assert_allclose(obj.text_query(outputs), unit(outputs['text_embeds']), rtol=1e-5)
  np.testing.assert_allclose(obj.text_query(outputs, 'eot'), unit(outputs['pooler_output']),
                             rtol=1e-5)
  mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
  mean = np.stack([outputs['last_hidden_state'][0, :2].mean(0),
                   outputs['last_hidden_state'][1].mean(0)])
  np.testing.assert_allclose(obj.text_query(outputs, 'mean', mask), unit(mean), rtol=1e-5)
  with pytest.raises(ValueError, match='projection_dim'):
    obj.text_query({'pooler_output': outputs['pooler_output']})


def _aux(config):
  null = np.random.default_rng(1).standard_normal((CTX_LEN, CTX_DIM)).astype(np.float32)
  return obj.set_null_context(obj.init_aux(None, None, config), null)


def _grad_fn(config, **model_kw):
  model = tiny_model(**model_kw)
  fn = lambda p, batch: jax.value_and_grad(obj.loss_fn, has_aux=True)(
      p, batch, jax.random.PRNGKey(0), _aux(config), 0, model=model, config=config)
  return jax.jit(fn)


def _norms(grads):
  return {k: float(np.sqrt(sum(np.sum(np.square(v)) for v in jax.tree.leaves(g))))
          for k, g in grads.items()}


SHARED = ('conv_in', 'time_embedding', 'down_blocks_0', 'mid_block')
NEW = ('text_stream_down_0_0', 'text_stream_mid_0', 'text_time_embedding', 'text_head',
       'logit_scale', 'null_image')
UP = ('up_blocks_0', 'up_blocks_1', 'conv_norm_out', 'conv_out')


def test_generation_loss_reaches_the_unet_and_not_the_text_stream():
  config = tiny_config(align_weight=0.0)
  (loss, (metrics, _)), grads = _grad_fn(config)(random_params(), tiny_batch())
  assert set(metrics) == {'loss', 'gen_loss', 'context_dropped'}
  assert np.isfinite(loss) and loss == metrics['gen_loss']
  norms = _norms(grads)
  for k in SHARED + UP:
    assert norms[k] > 0, k
  for k in NEW:
    assert norms[k] == 0, k


def test_alignment_loss_reaches_shared_and_new_weights_but_not_the_up_path():
  config = tiny_config(gen_weight=0.0, image_dropout=0.5)
  step = _grad_fn(config)
  params, batch = random_params(), tiny_batch()
  (loss, (metrics, _)), grads = step(params, batch)
  assert np.isfinite(loss) and loss == metrics['align_loss']
  assert 0 < metrics['image_dropped'] < 1        # so that the learned null sees gradient
  np.testing.assert_allclose(metrics['logit_scale'], 1 / 0.07, rtol=1e-5)
  norms = _norms(grads)
  for k in SHARED + NEW:
    assert norms[k] > 0, k
  for k in UP:
    assert norms[k] == 0, k
  # the text stream joins the shared self-attention of the image tokens
  flat = traverse_util.flatten_dict(grads['down_blocks_0'], sep='/')
  assert np.abs(flat['attentions_0/transformer_blocks_1/attn1/query/dense/kernel']).sum() > 0
  # c is masked in the alignment pass: the captions' condition does not enter it
  other = dict(batch, context=batch['context'] + 1.0)
  assert float(step(params, other)[0][0]) == float(loss)


@pytest.mark.parametrize('overrides,model_kw', [
    (dict(text_prediction='epsilon', regression_weight=0.5, positives='same_label'), {}),
    (dict(align_mode='contrastive', image_prediction='v_prediction'),
     dict(align='contrastive')),
    (dict(align_mode='none'), dict(align='none')),
], ids=['eps_prediction', 'contrastive', 'generation_only'])
def test_variants_trace(overrides, model_kw):
  """The other settings build a loss of the right kind (traced, not compiled)."""
  config = tiny_config(**overrides)
  model = tiny_model(**model_kw)
  params = random_params(**model_kw)
  loss, (metrics, _) = jax.eval_shape(
      lambda p, b: obj.loss_fn(p, b, jax.random.PRNGKey(0), _aux(config), 0, model=model,
                               config=config), params, tiny_batch())
  assert loss.shape == ()
  assert ('align_loss' in metrics) == (overrides.get('align_mode') != 'none')
  assert ('regression_loss' in metrics) == ('regression_weight' in overrides)


def test_mismatched_model_and_config_are_refused():
  config = tiny_config(align_mode='contrastive')
  with pytest.raises(ValueError, match='align'):
    obj.loss_fn(random_params(), tiny_batch(), jax.random.PRNGKey(0), _aux(config), 0,
                model=tiny_model(), config=config)
