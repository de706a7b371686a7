"""Analytic model FLOPs of a DiT / SD-DiT training image: what studies compare at equal
compute and what the benchmarks' MFU divides by.

Model FLOPs count the matrix products of the network (2 FLOPs per multiply-add), the
convention of DiT's GFLOP figures and of MFU: DiT-XL/2 at 256 px (256 tokens of width 1152,
28 blocks) is 118.6 G multiply-adds, i.e. ~237 GFLOP per forward pass; a training image costs
three forward passes (forward, and the backward's two products per weight), ~712 GFLOP.
Elementwise work, the optimizer and the EMA are not model FLOPs.

SD-DiT's training image: the student encoder on the kept tokens, the decoder on all of them
and the projection head on the kept tokens (and their mean, with the global term), each
forward + backward (x3); the teacher encoder on all tokens and its head on the kept ones,
forward only (x1).
"""
from __future__ import annotations


def dit_block_macs(tokens: int, width: int, mlp_ratio: float = 4.0) -> float:
  """Multiply-adds of one adaLN-Zero DiT block over `tokens` tokens, per image."""
  projections = 4 * tokens * width ** 2                # q, k, v, out
  attention = 2 * tokens ** 2 * width                  # scores and the weighted sum
  mlp = 2 * mlp_ratio * tokens * width ** 2
  ada_ln = width * 6 * width                           # one conditioning vector per image
  return projections + attention + mlp + ada_ln


def head_macs(vectors: int, width: int, head) -> float:
  """The projection head (MLP, bottleneck, prototypes) applied to `vectors` vectors."""
  dims = [width] + [head['hidden']] * (head['num_layers'] - 1) + [head['bottleneck']]
  mlp = sum(a * b for a, b in zip(dims[:-1], dims[1:]))
  return vectors * (mlp + head['bottleneck'] * head['out_dim'])


def sddit_flops(model, config) -> dict:
  """Forward FLOPs of the student (its loss's network) and the teacher, and per training image.

  `model` is the built `nn.dit.SDDiT` (its fields give the sizes), `config` the run's config.
  """
  tokens, split = model.num_tokens, model.decoder_mode == 'split'
  kept = int(tokens * (1.0 - config.sddit.mask_ratio))
  n_encoder = model.depth - model.decoder_depth if split else model.depth
  dec_width = model.width if split else model.decoder_width
  patch_dim = model.patch ** 2 * model.in_channels
  out_dim = patch_dim * (2 if model.learn_sigma else 1)
  embed = tokens * patch_dim * model.width
  encoder = lambda n: n_encoder * dit_block_macs(n, model.width, model.mlp_ratio)
  student = embed + encoder(kept) + model.decoder_depth * dit_block_macs(
      tokens, dec_width, model.mlp_ratio) + tokens * dec_width * out_dim + 2 * dec_width ** 2
  if not split:
    student += tokens * model.width * dec_width      # decoder_embed
  teacher = 0.0
  if config.sddit.dis_weight > 0:
    pooled = int(config.sddit.global_weight > 0)
    student += head_macs(kept * (config.sddit.patch_weight > 0) + pooled, model.width,
                         model.head)
    # the teacher's head always reads the kept tokens: its centre and entropy need them
    teacher = embed + encoder(tokens) + head_macs(kept + pooled, model.width, model.head)
  return {'student_forward_flops': 2 * student, 'teacher_forward_flops': 2 * teacher,
          'train_flops_per_image': 2 * (3 * student + teacher)}
