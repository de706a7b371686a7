"""facebookresearch/DiT's released DiT-XL/2 256x256, sampled as the DiT paper did (FID-50K 2.27).

    python launch/main.py --config=configs/dit_xl_official.py --workdir=$W --mode=sample \
      --config.init.dit_weights=dit_xl2_256.safetensors --config.data.vae_path=sd-vae-ft-ema
    python launch/main.py --config=configs/dit_xl_official.py --workdir=$W --mode=eval \
      --config.eval.reference_npz=VIRTUAL_imagenet256_labeled.npz \
      --config.eval.inception_weights=pt_inception-2015-12-05.safetensors

The weights predict epsilon and a learned-range variance on a 1,000-step linear schedule;
the sampler is DDPM's ancestral one on 250 respaced steps with classifier-free guidance 1.5 on
the first 3 latent channels (DiT's `forward_with_cfg`). A workdir without a checkpoint samples
init.dit_weights as they are. Step by step, with the conversion of the .pt file:
docs/evaluation.md, "Sampling DiT's released weights".
"""
from configs import common
from diffdis_jax.core.overrides import apply_overrides


def get_config():
  config = apply_overrides(common.imagenet_config('DiT-XL/2'), common.DIT_BASELINE,
                           'configs/dit_xl_official.py')
  config.objective = 'ddpm'          # the objective DiT's weights were trained on
  config.model.learn_sigma = True    # 8 output channels: epsilon, then the variance
  config.compute_dtype = 'float32'   # DiT sampled in float32 (TF32 matmuls on its GPUs)
  s = config.sample
  s.parameterization = 'ddpm'
  s.solver = 'ancestral'             # 'ddim' with e.g. respacing='ddim25' for a quick look
  s.respacing = '250'
  s.guidance = 1.5
  s.guidance_channels = 3            # DiT's default; 0 guides all 4
  s.labels = 'random'                # uniform per sample, as DiT's sample_ddp.py
  s.num_samples = 50_000
  s.batch_size = 256                 # global; each sample's guidance doubles it on device
  config.data.latent_scale = 0.18215  # DiT decodes samples / 0.18215
  return config
