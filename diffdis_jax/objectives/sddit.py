"""SD-DiT objective: denoising by the student decoder plus self-supervised discrimination
between a masked student encoder and an EMA teacher encoder on the same path. The denoising
objective (EDM, DiT's DDPM or SiT's flow: `config.objective`) is diffusion/objective.py's
interface; nothing here asks which one it is.

Baselines are settings of this one objective (see configs/):
  DiT            dis_weight 0, mask_ratio 0
  MaskDiT-style  dis_weight 0, infill 'mask_token', gen_loss_tokens 'visible',
                 masked_recon_weight 0.1
The functions are pure: (params, batch, rng, aux, step) in, loss and outputs out. `aux` holds
what the method carries between steps besides the parameters: the teacher (encoder and head)
and the centres of the teacher's logits.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp

from diffdis_jax.diffusion import objective as objective_lib
from diffdis_jax.nn import layers, token_ops

SHARED_ENCODER_KEYS = ('x_embedder', 't_embedder', 'y_embedder', 'projection_head')
GEN_LOSS_TOKENS = ('all', 'visible')   # which patches the denoising loss counts


def uses_teacher(config) -> bool:
  return config.sddit.dis_weight > 0


def teacher_keys(model) -> list[str]:
  """Top-level parameter names of the teacher: embedders, encoder blocks and the head, plus
  the mask token where there is one: the teacher never uses it, but the module declares it
  in setup, so no apply works without it."""
  n_enc = model.depth - model.decoder_depth if model.decoder_mode == 'split' else model.depth
  extra = ['mask_token'] if model.infill == 'mask_token' else []
  return list(SHARED_ENCODER_KEYS) + [f'blocks_{i}' for i in range(n_enc)] + extra


def init_aux(params, model, config) -> dict[str, Any]:
  """The teacher starts as a copy of the student encoder and head; centres start at 0."""
  if not uses_teacher(config):
    return {}
  out_dim = model.head['out_dim']
  return {
      'teacher': {k: params[k] for k in teacher_keys(model)},
      'center_patch': jnp.zeros((out_dim,), jnp.float32),
      'center_global': jnp.zeros((out_dim,), jnp.float32),
  }


def random_keep_indices(rng, batch: int, num_tokens: int, mask_ratio: float):
  """Per-sample random subsets of kept token positions, (batch, kept) int32; None if no mask."""
  num_keep = int(num_tokens * (1.0 - mask_ratio))
  if num_keep >= num_tokens:
    return None
  scores = layers.constrain(jax.random.uniform(rng, (batch, num_tokens)),
                            (layers.BATCH, layers.LENGTH))
  order = jnp.argsort(scores, axis=1)
  keep = jnp.sort(order[:, :num_keep], axis=1).astype(jnp.int32)
  return layers.constrain(keep, (layers.BATCH, layers.LENGTH))


def keep_mask(keep_idx, batch: int, num_tokens: int):
  """(batch, tokens) float32: 1 at kept (visible) positions."""
  if keep_idx is None:
    return jnp.ones((batch, num_tokens), jnp.float32)
  return token_ops.scatter_tokens(jnp.zeros((batch, num_tokens, 1)), jnp.ones(keep_idx.shape + (1,)),
                               keep_idx)[..., 0]


def teacher_momentum(step, config):
  """Cosine schedule from `teacher_momentum` to `teacher_momentum_final` over training."""
  s = config.sddit
  progress = jnp.clip(step / max(config.total_steps, 1), 0.0, 1.0)
  return s.teacher_momentum_final - (s.teacher_momentum_final - s.teacher_momentum) * (
      jnp.cos(jnp.pi * progress) + 1) / 2


def teacher_temperature(step, config):
  s = config.sddit
  if s.teacher_temp_warmup_steps <= 0:
    return jnp.float32(s.teacher_temp)
  frac = jnp.clip(step / s.teacher_temp_warmup_steps, 0.0, 1.0)
  return s.teacher_temp_warmup_start + frac * (s.teacher_temp - s.teacher_temp_warmup_start)


def self_distillation_ce(student_logits, teacher_logits, center, student_temp, teacher_temp,
                         weights=None):
  """Cross-entropy of the student's softmax against the centred, sharpened teacher softmax.

  Averaged over every leading position, optionally weighted. The teacher side is constant.
  """
  targets = jax.lax.stop_gradient(jax.nn.softmax((teacher_logits - center) / teacher_temp, -1))
  ce = -jnp.sum(targets * jax.nn.log_softmax(student_logits / student_temp, -1), axis=-1)
  if weights is None:
    return ce.mean()
  return jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def denoising_objective(config) -> objective_lib.Objective:
  """The objective `config.objective` names ('edm' when the field is absent), with its fields."""
  return objective_lib.from_config(config)


def teacher_policy(config) -> objective_lib.TeacherPolicy:
  s = config.sddit
  return objective_lib.TeacherPolicy(policy=s.teacher_sigma, grid_steps=s.teacher_grid_steps,
                                     scale=s.teacher_sigma_scale, fixed=s.teacher_sigma_fixed)


def _masked_mean(values, weights):
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def loss_fn(params, batch, rng, aux, step, *, model, config):
  """Returns (loss, (metrics, outputs)); `outputs` feed `update_aux`."""
  s, objective = config.sddit, denoising_objective(config)
  x0, labels = batch['image'].astype(jnp.float32), batch['label']
  b, num_tokens = x0.shape[0], model.num_tokens
  r_drop, r_sigma, r_noise, r_mask = jax.random.split(rng, 4)

  # class dropout to the null class, for classifier-free guidance
  drop = jax.random.uniform(r_drop, (b,)) < s.label_dropout
  labels = jnp.where(drop, model.num_classes, labels)

  # student and teacher views: one noise draw, two noise levels on the same path
  level_s = objective.sample_level(r_sigma, b)
  noise = layers.constrain(jax.random.normal(r_noise, x0.shape, jnp.float32), layers.IMAGE)
  x_s = objective.noisy(x0, noise, level_s)
  keep_idx = random_keep_indices(r_mask, b, num_tokens, s.mask_ratio)
  visible = keep_mask(keep_idx, b, num_tokens)

  net_in, net_time = objective.net_inputs(x_s, level_s)
  net_out, student_tokens = model.apply(
      {'params': params}, net_in, net_time, labels, keep_idx, method='forward_with_tokens')
  per_pixel = objective.element_loss(net_out, x_s, x0, noise, level_s)
  per_patch = token_ops.patchify(per_pixel, model.patch).mean(-1)  # (batch, tokens)
  gen_weights = visible if s.gen_loss_tokens == 'visible' else jnp.ones_like(visible)
  gen_loss = _masked_mean(per_patch, gen_weights)
  loss = gen_loss
  # sigma_*: the EDM-equivalent noise level of the views, whatever the objective
  metrics = {'gen_loss': gen_loss, 'sigma_student': objective.to_sigma(level_s).mean(),
             'mask_ratio_actual': 1.0 - visible.mean()}
  if s.masked_recon_weight > 0 and keep_idx is not None:
    recon = _masked_mean(per_patch, 1.0 - visible)
    loss = loss + s.masked_recon_weight * recon
    metrics['masked_recon_loss'] = recon

  outputs = {}
  if uses_teacher(config):
    dis_loss, dis_metrics, outputs = _discrimination(
        params, aux, student_tokens, x0, noise, level_s, labels, keep_idx, step,
        model=model, config=config)
    loss = loss + s.dis_weight * dis_loss
    metrics.update(dis_loss=dis_loss, **dis_metrics)
  metrics['loss'] = loss
  return loss, (metrics, outputs)


def _discrimination(params, aux, student_tokens, x0, noise, level_s, labels,
                    keep_idx: Optional[jax.Array], step, *, model, config):
  """iBOT-style patch (and optional pooled) self-distillation on the visible tokens."""
  s, objective = config.sddit, denoising_objective(config)
  level_t = objective.teacher_level(level_s, teacher_policy(config))
  x_t = objective.noisy(x0, noise, level_t)
  t_in, t_time = objective.net_inputs(x_t, level_t)
  # The teacher is a separate argument of the loss, so no gradient flows into it; it still
  # sees the full (unmasked) view and is read at the student's visible positions.
  teacher_vars = {'params': aux['teacher']}
  t_tokens = model.apply(teacher_vars, t_in, t_time, labels, method='encode')
  if keep_idx is not None:
    t_tokens = layers.constrain(token_ops.gather_tokens(t_tokens, keep_idx), layers.TOKENS)
  t_tokens = jax.lax.stop_gradient(t_tokens)

  temp_t = teacher_temperature(step, config)
  project_s = lambda h: model.apply({'params': params}, h, method='project')
  project_t = lambda h: jax.lax.stop_gradient(model.apply(teacher_vars, h, method='project'))

  t_patch = project_t(t_tokens)
  loss = jnp.float32(0.0)
  metrics, outputs = {}, {'teacher_patch_mean': t_patch.mean(axis=(0, 1))}
  if s.patch_weight > 0:
    patch = self_distillation_ce(project_s(student_tokens), t_patch, aux['center_patch'],
                                 s.student_temp, temp_t)
    loss = loss + s.patch_weight * patch
    metrics['dis_patch_loss'] = patch
  if s.global_weight > 0:
    t_global = project_t(t_tokens.mean(axis=1))
    glob = self_distillation_ce(project_s(student_tokens.mean(axis=1)), t_global,
                                aux['center_global'], s.student_temp, temp_t)
    loss = loss + s.global_weight * glob
    metrics['dis_global_loss'] = glob
    outputs['teacher_global_mean'] = t_global.mean(axis=0)
  metrics['sigma_teacher'] = objective.to_sigma(level_t).mean()
  probs = jax.nn.softmax((t_patch - aux['center_patch']) / temp_t, -1)
  metrics.update(teacher_diagnostics(probs))
  if s.patch_weight > 0:
    # the cross-entropy is the KL plus the targets' entropy, over the same tokens
    metrics['dis_patch_kl'] = metrics['dis_patch_loss'] - metrics['teacher_entropy']
  return loss, metrics, outputs


def _entropy(p, axis=-1):
  return -jnp.sum(p * jnp.log(p + 1e-12), axis)


def teacher_diagnostics(probs) -> dict:
  """What tells a healthy sharp teacher from a collapsed one, from its target distributions
  (batch, tokens, K): per-token sharpness alone cannot.

  teacher_entropy       mean entropy of one token's target: low = sharp
  teacher_usage_entropy entropy of the batch-mean target: log K when every prototype is used
                        alike, 0 when one prototype takes every token
  teacher_prototypes_won how many prototypes are the argmax of at least one token
  """
  k = probs.shape[-1]
  flat = probs.reshape(-1, k)
  won = jnp.zeros((k,), jnp.float32).at[jnp.argmax(flat, -1)].max(1.0)
  return {'teacher_entropy': _entropy(flat).mean(),
          'teacher_usage_entropy': _entropy(flat.mean(0)),
          'teacher_prototypes_won': won.sum()}


# thresholds of `collapse_verdict`, as fractions of log K. DINO's two failure modes are a few
# prototypes taking every token (usage entropy far below log K) and targets that say nothing
# (every token's target near uniform: the cross-entropy then teaches the student a constant).
# Below 0.4 log K the teacher spreads its tokens over fewer than K**0.4 prototypes in effect:
# 4 of 32, 16 of 1,024, 12 of the Fashion-MNIST study's 512
DOMINANT_USAGE_FRACTION = 0.4
UNIFORM_TOKEN_FRACTION = 0.95


def collapse_verdict(metrics: dict, out_dim: int) -> str:
  """'dominant', 'uniform' or 'healthy', from one logged step's teacher diagnostics."""
  log_k = math.log(out_dim)
  if metrics['teacher_usage_entropy'] < DOMINANT_USAGE_FRACTION * log_k:
    return 'dominant'
  if metrics['teacher_entropy'] > UNIFORM_TOKEN_FRACTION * log_k:
    return 'uniform'
  return 'healthy'


def update_aux(aux, params, outputs, step, *, model, config):
  """EMA of the teacher towards the student encoder and head; EMA of the logit centres.
  A config without the discriminative loss (a final phase that drops it) leaves them as
  they are: nothing reads them until the run ends."""
  if not aux or not uses_teacher(config):
    return aux
  m = teacher_momentum(step, config)
  student = {k: params[k] for k in teacher_keys(model)}
  teacher = jax.tree.map(lambda t, p: m * t + (1 - m) * p, aux['teacher'], student)
  cm = config.sddit.center_momentum
  new = dict(aux, teacher=teacher)
  new['center_patch'] = cm * aux['center_patch'] + (1 - cm) * outputs['teacher_patch_mean']
  if 'teacher_global_mean' in outputs:
    new['center_global'] = cm * aux['center_global'] + (1 - cm) * outputs['teacher_global_mean']
  return new
