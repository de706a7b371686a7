"""The seeded comparison studies as code: per method, a base config, its scales and variants.

A variant is a name, one line saying what it is, and the config overrides that make it from
the study's base config (`configs/demo.py` for SD-DiT, `configs/demo_diffdis.py` for
DiffDis). Every variant of a study shares everything else: data, steps, batch, optimiser and
seeds. `launch/study.py` runs them; docs/study.md explains the choices, and
diffdis_jax/study/spec.py the order in which a run's config is built.
"""
from __future__ import annotations

from configs import common, demo, demo_diffdis, fmnist_diffdis, fmnist_sddit
from diffdis_jax.study.spec import Scale, Study, Variant

SCALES = ('cpu', 'cpu_ratio', 'gpu', 'finetune')


# The DiT and MaskDiT baselines are the configurations of README.md and docs/paper_notes.md
# ("Baselines as configurations"); the rest are SD-DiT with one choice the paper notes leave
# open changed from its default.
# DiT with SD-DiT's block count: the decoder's blocks added to the encoder's depth (of the
# scale's config), so that the two generators have nearly the same parameters; SD-DiT's
# projection head is training-only and has no counterpart
# (a 'split' SD-DiT's decoder is already part of its depth)
DIT_EQUAL_SIZE = Variant(
    'dit_equal_size', 'DiT baseline as deep as SD-DiT\'s encoder and decoder together, no '
    'mask, no teacher', common.DIT_BASELINE,
    derived=lambda config: {'model.depth': config.model.depth + (
        config.model.decoder_depth if config.model.decoder_mode == 'separate' else 0)})



def maskdit_decoder(config) -> dict:
  """MaskDiT's decoder rule: a separate decoder on top of the whole stack. A scale whose
  SD-DiT splits its stack (the last blocks decode) gives MaskDiT those blocks back in the
  encoder and as many separate decoder blocks, at the stack's width."""
  m = config.model
  if m.decoder_mode == 'separate':
    return {}
  return {'model.decoder_mode': 'separate', 'model.decoder_width': m.width,
          'model.decoder_heads': m.num_heads}


MASKDIT_OVERRIDES = {'model.infill': 'mask_token', 'sddit.gen_loss_tokens': 'visible',
                     'sddit.masked_recon_weight': 0.1, 'sddit.dis_weight': 0.0,
                     'sddit.mask_ratio': 0.5}
MASKDIT = Variant('maskdit', 'MaskDiT-style: 50% masked, learned mask token in the decoder, '
                  'loss on visible patches + 0.1 x masked reconstruction, no teacher',
                  MASKDIT_OVERRIDES, derived=maskdit_decoder)
# MaskDiT's whole recipe: its code fine-tunes without the mask at half the learning rate
# (5e-5 after 1e-4) for the last ~5% of its updates; here the last 10% at half the study's 1e-3
MASKDIT_FINETUNE = Variant(
    'maskdit_finetune', 'MaskDiT-style, then its unmasked fine-tune: the last 10% of the steps '
    'with no mask at half the learning rate',
    {**MASKDIT_OVERRIDES, 'final_phase.fraction': 0.1, 'final_phase.lr': 5e-4},
    derived=maskdit_decoder)

SDDIT_VARIANTS = (
    Variant('dit', 'DiT baseline: the encoder blocks alone, no decoder, no mask, no teacher',
            common.DIT_BASELINE),
    MASKDIT,
    Variant('sddit', 'SD-DiT with its defaults (teacher sigma karras_next, mask 0.2, '
            'lambda 1, patch-level loss, noisy infill)', {}),
    Variant('teacher_sigma_scale', 'SD-DiT, teacher sigma = 0.5 x the student\'s',
            {'sddit.teacher_sigma': 'scale'}),
    Variant('teacher_sigma_fixed', 'SD-DiT, teacher sigma fixed at 0.05',
            {'sddit.teacher_sigma': 'fixed'}),
    Variant('teacher_sigma_equal', 'SD-DiT, teacher at the student\'s own sigma',
            {'sddit.teacher_sigma': 'equal'}),
    Variant('mask_0.1', 'SD-DiT, mask ratio 0.1', {'sddit.mask_ratio': 0.1}),
    Variant('mask_0.5', 'SD-DiT, mask ratio 0.5', {'sddit.mask_ratio': 0.5}),
    Variant('lambda_0.1', 'SD-DiT, discriminative weight lambda 0.1',
            {'sddit.dis_weight': 0.1}),
    Variant('lambda_0.5', 'SD-DiT, discriminative weight lambda 0.5',
            {'sddit.dis_weight': 0.5}),
    Variant('patch_and_global', 'SD-DiT, patch-level loss + a global term on mean-pooled '
            'tokens (weight 1)', {'sddit.global_weight': 1.0}),
    Variant('global_only', 'SD-DiT, the global term alone (no patch-level loss)',
            {'sddit.patch_weight': 0.0, 'sddit.global_weight': 1.0}),
    Variant('infill_mask_token', 'SD-DiT, learned mask token instead of the noisy input at '
            'masked decoder positions', {'model.infill': 'mask_token'}),
)

# SD-DiT's best reading with MaskDiT's last phase (for SD-DiT the phase drops the mask; the
# teacher loss goes on, over every token): does the gap between training on a masked
# student and sampling unmasked hold its fd back?
SDDIT_FINETUNE = Variant(
    'teacher_sigma_fixed_finetune', 'SD-DiT, teacher sigma fixed at 0.05, then the last 10% '
    'of the steps unmasked at half the learning rate',
    {'sddit.teacher_sigma': 'fixed', 'final_phase.fraction': 0.1, 'final_phase.lr': 5e-4})
# the same, and the discriminative loss off in that phase: does the teacher's objective hold
# the generator back once its tokens are good? (against the variant above: only the loss
# differs in the last 10%)
SDDIT_DENOISE_FINISH = Variant(
    'teacher_sigma_fixed_finetune_no_dis', 'SD-DiT, teacher sigma fixed at 0.05, then the '
    'last 10% unmasked at half the learning rate on denoising alone (no teacher loss)',
    {**SDDIT_FINETUNE.overrides, 'sddit.final_phase_dis_weight': 0.0})
# the control for both final phases: DiT has no mask, so its last 10% at half the rate
# shows what the lower learning rate alone does to the fd
DIT_FINETUNE = Variant(
    'dit_finetune', 'DiT baseline, then the last 10% of the steps at half the learning rate '
    '(no mask to remove: the control for the final phases above)',
    {**common.DIT_BASELINE, 'final_phase.fraction': 0.1, 'final_phase.lr': 5e-4})

# the Fashion-MNIST latent study: the baselines at equal size and as today, and SD-DiT with
# its defaults and the two settings that did best on the digits
FMNIST_VARIANTS = (DIT_EQUAL_SIZE,) + tuple(
    v for v in SDDIT_VARIANTS
    if v.name in ('dit', 'maskdit', 'sddit', 'teacher_sigma_fixed', 'mask_0.1')) + (
        MASKDIT_FINETUNE, SDDIT_FINETUNE, SDDIT_DENOISE_FINISH, DIT_FINETUNE)

# configs/diffdis_common.py names these baselines; paper §4 compares against them
DIFFDIS_VARIANTS = (
    Variant('diffdis', 'DiffDis with its defaults (generation + diffusion-based alignment)',
            {}),
    Variant('gen_only', 'generation only: the plain UNet, no text stream, no alignment loss',
            {'diffdis.align_mode': 'none'}),
    Variant('align_only', 'alignment only: the DiffDis model with the image loss weight 0',
            {'diffdis.gen_weight': 0.0}),
    Variant('clip_style', 'CLIP-style: the same image tower pooled by the head, contrastive '
            'loss, no diffusion of the text query', {'diffdis.align_mode': 'contrastive'}),
)

# the CPU scale: the digits demo's model on the Fashion-MNIST latents (a step about a quarter
# of configs/fmnist_sddit.py's), so that 18 runs fit in about 85 minutes on a 2-core CPU
FMNIST_STUDY_STEPS = 1000
# the recipe's tuned teacher and guidance (configs/fmnist_sddit.py) back to the defaults the
# study compares from: its `sddit` is SD-DiT as the paper notes read it
FMNIST_STUDY_DEFAULTS = {'sddit.teacher_sigma': 'karras_next', 'sample.guidance': 1.5}
FMNIST_CPU = {**FMNIST_STUDY_DEFAULTS,
              'model.width': 96, 'model.num_heads': 4, 'model.depth': 4,
              'model.decoder_depth': 2, 'model.decoder_width': 96, 'model.decoder_heads': 4,
              'model.head': dict(hidden=256, bottleneck=64, out_dim=256, num_layers=3),
              'batch_size': 32, 'optim.lr': 1e-3, 'optim.warmup_steps': 100,
              'checkpoint_every': 500, 'sample_every': 500}

# SD-DiT at the paper's cost ratio (configs/sddit_s.py's rule): one stack of 6 blocks of width
# 96 whose last 2 decode (sddit_s: 4 of 12), and a head of twice the width with 512 prototypes:
# 1.22x DiT's training FLOPs per image, where DiT is the same 6 blocks (bench/flops.py). Three
# times the 'cpu' scale's images, scored at four marks
FMNIST_RATIO_STEPS = 3000
FMNIST_CPU_RATIO = {**FMNIST_CPU, 'model.depth': 6, 'model.decoder_mode': 'split',
                    'model.decoder_depth': 2,
                    'model.head': dict(hidden=192, bottleneck=64, out_dim=512, num_layers=3),
                    'checkpoint_every': 750, 'sample_every': 750}

# DiffDis on the Fashion-MNIST latents: configs/fmnist_diffdis.py for a quarter of its steps,
# scored on 2,000 test images, so that 12 runs fit in about an hour on a 2-core CPU
FMNIST_DIFFDIS_CPU = {'eval.test_images': 2000}

# DiffDis as the paper trains it: every variant fine-tunes one generation-only UNet trained
# first on the same latents (the `gen_only` variant is that training continued). The generator
# is configs/fmnist_diffdis.py with align_mode 'none' for its full 2,000 steps (a trained
# model, as SD is; the from-scratch rows stop at 500), trained once before the study:
#   python launch/main.py --config=configs/fmnist_diffdis.py --workdir=workdirs/fmnist/generator \
#     --config.diffdis.align_mode=none          (plus the study's data --set fields, if any)
# The fine-tune has the from-scratch scale's 500 steps at a third of its learning rate: the
# fresh text stream has to learn in them, while Adam's steps on the trained UNet stay below
# the rate it was trained at. Not tuned; --set=optim.lr=... changes it for every variant.
FMNIST_GENERATOR = 'workdirs/fmnist/generator'
FMNIST_DIFFDIS_FINETUNE = {**FMNIST_DIFFDIS_CPU, 'init.pretrained_generator': FMNIST_GENERATOR,
                           'optim.lr': 3e-4, 'optim.warmup_steps': 50}

STUDIES = {
    'sddit': Study(
        'sddit', 'configs/demo.py', demo.get_config, (DIT_EQUAL_SIZE,) + SDDIT_VARIANTS,
        scales={
            'cpu': Scale(
                'configs/demo.py as shipped: 4+2 blocks of width 96, 16x16 digits, batch 32',
                steps=1000, eval_fractions=(0.5, 1.0), samples=300, overrides={}),
            'gpu': Scale(
                'DiT-S/2 widths on 16x16 digits: 12+4 blocks of width 384, batch 128',
                steps=10_000, eval_fractions=(0.25, 0.5, 1.0), samples=1000, overrides={
                    'model.width': 384, 'model.depth': 12, 'model.num_heads': 6,
                    'model.decoder_depth': 4, 'model.decoder_width': 256,
                    'model.decoder_heads': 8, 'model.head.hidden': 1024,
                    'model.head.bottleneck': 128, 'model.head.out_dim': 2048,
                    'batch_size': 128, 'optim.lr': 5e-4, 'optim.warmup_steps': 500,
                    'checkpoint_every': 2500, 'sample_every': 2500, 'log_every': 100,
                    'sample.steps': 40}),
        },
        # what the study reports, with the better direction (for the table's header)
        metrics=(('fd_digits', 'lower'), ('sample_class_acc', 'higher')),
        metric_note='fd_digits (not FID: Fréchet distance in a digits classifier\'s features, '
                    'against the held-out digits) and sample_class_acc of class-balanced '
                    'samples (eval/digits_metric.py).',
        reference='sddit', cost_anchor='dit'),
    'sddit_fmnist': Study(
        'sddit_fmnist', 'configs/fmnist_sddit.py', fmnist_sddit.get_config, FMNIST_VARIANTS,
        scales={
            'cpu': Scale(
                'the digits demo\'s model (4+2 blocks of width 96, patch 1) on the 8x8x4 VAE '
                'latents of Fashion-MNIST (make fmnist prepares them), batch 32',
                steps=FMNIST_STUDY_STEPS, eval_fractions=(0.5, 1.0), samples=500,
                overrides=FMNIST_CPU),
            'gpu': Scale(
                'DiT-S widths on the same latents: 12+4 blocks of width 384, batch 256',
                steps=20_000, eval_fractions=(0.25, 0.5, 1.0), samples=10_000, overrides={
                    **FMNIST_STUDY_DEFAULTS,
                    'model.width': 384, 'model.depth': 12, 'model.num_heads': 6,
                    'model.decoder_depth': 4, 'model.decoder_width': 384,
                    'model.decoder_heads': 6, 'batch_size': 256, 'optim.lr': 3e-4,
                    'checkpoint_every': 5000, 'sample_every': 5000, 'sample.steps': 40}),
            'cpu_ratio': Scale(
                'SD-DiT at the paper\'s cost ratio on the same latents: 6 blocks of width 96 '
                '(the last 2 decode; DiT is the same 6 blocks), head 192/64/512, batch 32',
                steps=FMNIST_RATIO_STEPS, eval_fractions=(0.25, 0.5, 0.75, 1.0), samples=500,
                overrides=FMNIST_CPU_RATIO),
        },
        metrics=(('fd_fmnist', 'lower'), ('sample_class_acc', 'higher')),
        metric_note='fd_fmnist (Fréchet distance in the features of the project\'s '
                    'Fashion-MNIST classifier, against the 10,000 test images; not FID) and '
                    'sample_class_acc of class-balanced samples decoded by the VAE '
                    '(eval/fashion_mnist_metric.py).',
        reference='sddit', cost_anchor='dit'),
    'diffdis': Study(
        'diffdis', 'configs/demo_diffdis.py', demo_diffdis.get_config, DIFFDIS_VARIANTS,
        scales={
            'cpu': Scale(
                'configs/demo_diffdis.py as shipped: channels 32/64 on 8x8 digits, batch 32',
                steps=600, eval_fractions=(1.0,), samples=300, overrides={}),
            'gpu': Scale(
                '16x16 digits, channels 64/128, two resnets per level, batch 128',
                steps=10_000, eval_fractions=(1.0,), samples=1000, overrides={
                    'data.image_size': 16, 'model.input_size': 16,
                    'model.block_out_channels': (64, 128), 'model.layers_per_block': 2,
                    'model.attention_head_dim': 8, 'model.norm_num_groups': 32,
                    'diffdis.head_blocks': 2, 'diffdis.zeroshot.steps': 20,
                    'diffdis.sample.steps': 50, 'batch_size': 128, 'optim.lr': 5e-4,
                    'optim.warmup_steps': 500, 'checkpoint_every': 2500,
                    'sample_every': 2500, 'log_every': 100}),
        },
        # fd_digits / sample_class_acc here are of text-to-image samples of the class prompts
        metrics=(('zeroshot_top1', 'higher'), ('fd_digits', 'lower'),
                 ('sample_class_acc', 'higher')),
        metric_note='zeroshot_top1 on the held-out digits, class prompts as candidates; '
                    'fd_digits and sample_class_acc of text-to-image samples of the class '
                    'prompts (tasks/diffdis/sources.py).'),
    'diffdis_fmnist': Study(
        'diffdis_fmnist', 'configs/fmnist_diffdis.py', fmnist_diffdis.get_config,
        DIFFDIS_VARIANTS,
        scales={
            'cpu': Scale(
                'configs/fmnist_diffdis.py\'s model (channels 64/128) on the 8x8x4 latents '
                '(make fmnist prepares them), batch 64, 2,000 test images',
                steps=500, eval_fractions=(1.0,), samples=500, overrides=FMNIST_DIFFDIS_CPU),
            'gpu': Scale(
                'channels 128/256, two resnets per level and two head blocks, batch 256, '
                'all 10,000 test images',
                steps=20_000, eval_fractions=(0.25, 0.5, 1.0), samples=10_000, overrides={
                    'model.block_out_channels': (128, 256), 'model.layers_per_block': 2,
                    'model.attention_head_dim': 8, 'model.norm_num_groups': 32,
                    'diffdis.head_blocks': 2, 'batch_size': 256, 'optim.lr': 3e-4,
                    'optim.warmup_steps': 1000, 'checkpoint_every': 5000,
                    'sample_every': 5000, 'diffdis.sample.steps': 50}),
            'finetune': Scale(
                'every variant fine-tuned from the generation-only UNet in '
                'init.pretrained_generator (configs/fmnist_diffdis.py, align_mode none, 2,000 '
                'steps), 500 steps at lr 3e-4, 2,000 test images',
                steps=500, eval_fractions=(0.5, 1.0), samples=500,
                overrides=FMNIST_DIFFDIS_FINETUNE),
        },
        metrics=(('zeroshot_top1', 'higher'), ('zeroshot_top1_heldout', 'higher'),
                 ('fd_fmnist', 'lower'), ('sample_class_acc', 'higher')),
        metric_note='zeroshot_top1 on the Fashion-MNIST test images with the training '
                    'prompts as candidates, zeroshot_top1_heldout with the held-out prompts '
                    'only (data/fashion_mnist_captions.py); fd_fmnist and sample_class_acc of '
                    'text-to-image samples of the class prompts, decoded by the VAE '
                    '(eval/fashion_mnist_metric.py).',
        reference='diffdis'),
}
