"""bench/profile_step.py's reading of the compiled HLO: labels and module attribution."""
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'bench'))
import profile_step  # noqa: E402  pylint: disable=wrong-import-position


class TinyBlock(nn.Module):
  @nn.compact
  def __call__(self, x):
    return jnp.tanh(nn.Dense(8, name='proj')(x))


def test_every_op_of_a_compiled_grad_is_named_and_attributed_to_its_module():
  x = jnp.ones((4, 8))
  params = TinyBlock().init(jax.random.PRNGKey(0), x)
  loss = lambda p: jnp.sum(TinyBlock().apply(p, x) ** 2)
  text = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
  index = profile_step.hlo_index(text)
  labels = {label for label, _ in index.values()}
  assert labels & {'dot', 'fusion(dot)'}, labels
  places = {profile_step.attribute(op_name) for _, op_name in index.values() if op_name}
  # the forward product and its transpose both land on the Dense, in their own pass
  assert ('proj', 'forward') in places and ('proj', 'backward') in places, places


def test_attribute_drops_indices_and_names_work_outside_the_model():
  name = ('jit(train_step)/transpose(jvp(DiffDisUNet))/up_blocks_1/resnets_0/conv1/conv/'
          'conv_general_dilated')
  assert profile_step.attribute(name) == ('conv1/conv', 'backward')
  name = ('jit(train_step)/transpose(jvp(DiffDisUNet.predict_text))/DiffDisUNet._down_mid/'
          'DiffDisUNet._attend/attentions_1.from_tokens/proj_out/conv/dot_general')
  assert profile_step.attribute(name) == ('predict_text: proj_out/conv', 'backward')
  assert profile_step.attribute('jit(train_step)/jit(_where)/select_n') == \
      ('step: select_n', 'forward')
