"""DiffDis defaults: every choice the paper leaves open, as a field with its best reading.

`diffdis_defaults()` becomes `config.diffdis` of a DiffDis config. The reasons are in
../shared/papers/diffdis.md (section numbers below) and docs/paper_notes.md. Baselines are
settings of these fields:
  generation only      align_mode 'none'          (lambda 0 and no text stream at all)
  alignment only       gen_weight 0
  CLIP-style           align_mode 'contrastive'   (same image tower, head on a learned token,
                                                    no diffusion of e)
"""
import ml_collections
from ml_collections import config_dict

from configs import common


def diffdis_defaults() -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  # -- model (nn/diffdis.py) --
  d.align_mode = 'diffusion'      # 'diffusion' (DiffDis) | 'contrastive' | 'none' (baselines)
  d.text_dim = 768                # d_y: CLIP ViT-L/14 projection width in SD 1.x (§1.2)
  d.head_blocks = 2               # M transformer blocks after the mid block: unknown (§1.1);
                                  # 2 is a small head next to SD's 16 attention blocks
  d.image_null = 'learned'        # dropped image condition: a learned per-channel latent,
                                  # unlike any real latent; 'zeros' is the other reading (§2.5)
  d.logit_scale_init = 1 / 0.07   # CLIP's temperature; the paper's Eq. 8 has none (§2.4)
  d.logit_scale_max = 100.0       # CLIP's clamp of exp(logit_scale)

  # -- losses (objectives/diffdis.py) --
  d.gen_weight = 1.0              # L_IG weight; 0: alignment-only baseline
  d.align_weight = 1.0            # lambda in L_IG + lambda L_ITA: unknown (§2.5); 1 is the
                                  # neutral reading, expect to sweep
  d.gamma = 1.0                   # scale of e_0 in e_t = gamma sqrt(abar) e_0 + ...: unknown
                                  # (§2.2); 1 is plain DDPM; sweep 1, 0.5, 0.1
  d.text_prediction = 'x0'        # what the head predicts: 'x0' (main setting, §2.3) | 'epsilon'
  d.image_prediction = 'epsilon'  # SD 1.x: 'epsilon'; SD 2.x 768 px: 'v_prediction'
  d.context_dropout = 0.1         # P(c -> empty-prompt embedding), generation pass (§2.5)
  d.image_dropout = 0.1           # P(image condition -> null), alignment pass (§2.5)
  d.align_image_timestep = 0      # UNet time index of the clean image in the alignment pass
  d.positives = 'diagonal'        # InfoNCE positives: 'diagonal' (paper, CLIP) | 'same_query'
                                  # (identical e are positives) | 'same_label' (batch['label'])
  d.regression_weight = 0.0       # optional MSE of the prediction (x0 or eps of e); paper: none
  d.normalize_query = True        # L2-normalise batch['query'] (idempotent for CLIP's e)

  # -- text query and condition (data preparation; objectives/diffdis.text_query) --
  d.query = 'projected_eot'       # e = L2norm(text_projection(h_EOT)) (§1.2) | 'eot' (no
                                  # projection) | 'mean' (masked mean of the last hidden states)
  d.context_length = 77           # tokens of c (SD: 77)
  d.context_dim = 768             # width of c (SD 1.x: 768)

  # -- SD's noise schedule (diffusion/ddpm.py), shared by both streams (§2.1, §2.2) --
  d.num_train_timesteps = 1000
  d.beta_start = 0.00085
  d.beta_end = 0.012
  d.beta_schedule = 'scaled_linear'

  # -- zero-shot classification and retrieval (eval/diffdis_sampler.py, §3.2) --
  d.zeroshot = ml_collections.ConfigDict()
  d.zeroshot.steps = 20           # DDIM steps over e: unknown; the text signal is swamped
                                  # above small t, so few steps suffice
  d.zeroshot.guidance = 2.0       # CFG scale on the image condition (paper's 1 + w); unknown
  d.zeroshot.spacing = 'trailing' # start at t = T-1: the start is pure noise
  d.zeroshot.seeds = 1            # noise draws averaged per image (unit vectors, then mean)
  d.zeroshot.templates = ('a photo of a {}.',)  # CLIP-style; ensembling = mean of unit vectors
  d.zeroshot.batch = 64           # images per predictor call (final evaluation, --mode=eval)

  # -- text-to-image sampling (eval/diffdis_sampler.py, §3.1) --
  d.sample = ml_collections.ConfigDict()
  d.sample.steps = 50             # SD's usual DDIM setting
  d.sample.guidance = 7.5         # CFG on c: SD's usual scale
  d.sample.spacing = 'leading'    # SD pipeline's DDIM default (steps_offset 1)
  d.sample.per_prompt = 8         # preview grid: samples per prompt (one row per prompt)
  d.sample.prompts = ('a photograph of an astronaut riding a horse',  # preview rows for
                      'a bowl of fruit on a wooden table',            # image-text pairs; the
                      'a red double-decker bus in the rain')          # digits demo has its own
  return d


def sd15_unet() -> ml_collections.ConfigDict:
  """config.model of a DiffDis config: SD 1.5's UNet (diffusers' field names) on 64x64x4
  latents (512 px through the SD VAE)."""
  return ml_collections.ConfigDict(dict(
      input_size=64, in_channels=4,
      block_out_channels=(320, 640, 1280, 1280),
      down_block_types=('CrossAttnDownBlock2D',) * 3 + ('DownBlock2D',),
      up_block_types=('UpBlock2D',) + ('CrossAttnUpBlock2D',) * 3,
      layers_per_block=2, attention_head_dim=8, transformer_layers_per_block=1,
      norm_num_groups=32, use_linear_projection=False,
      # attention: None ('einsum' on CPU, else jax's pick) | 'einsum' | 'xla' | 'cudnn';
      # convolutions: None (on CPU im2col for 1x1 and for small maps with many channels,
      # else XLA's) | 'xla' | 'im2col' (nn/convolution.py);
      # remat: 'none' | 'full' | 'dots' for every ResNet and transformer block (common.py)
      attention_impl=config_dict.placeholder(str), conv_impl=config_dict.placeholder(str),
      remat='none'))


def diffdis_eval() -> ml_collections.ConfigDict:
  """config.eval of a DiffDis config: what --mode=eval reads (tasks/diffdis/task.py) and the
  final evaluation's sample count. The predictor's settings (steps, guidance, seeds, batch)
  are diffdis.zeroshot's."""
  ev = ml_collections.ConfigDict()
  # zero-shot suite (eval/zeroshot_suite.py): comma-separated names of
  # eval/zeroshot_classes.json ('cifar10,dtd'), 'all', or '' : none
  ev.zeroshot_datasets = ''
  ev.tfds_data_dir = ''           # prepared tfds datasets; nothing is downloaded
  ev.zeroshot_max_images = 0      # per dataset; 0: the whole test split
  # image<->text retrieval R@1/5/10: a glob of image-text shards (data/captions.py formats),
  # e.g. COCO's 5k test images with their 5 captions each; '' : none
  ev.retrieval_shards = ''
  ev.retrieval_max_pairs = 0      # captions read; 0: all
  # captioned class sets only (digits, Fashion-MNIST): text-to-image samples of the class
  # prompts scored at the end of training by the set's classifier metric (fd_digits or
  # fd_fmnist, and sample_class_acc); 0: none
  ev.metric_samples = 0
  ev.classifier_dir = ''          # where that classifier is cached; '' : in the workdir
  ev.test_images = 0              # captioned Fashion-MNIST: test images scored; 0: all 10,000
  return ev


def captioned_demo(config, captions, *, input_size: int, in_channels: int, channels: tuple,
                   norm_num_groups: int, **text_encoder) -> ml_collections.ConfigDict:
  """A captioned CPU demo's model and text side (configs/demo_diffdis.py,
  configs/fmnist_diffdis.py): a two-level UNet with cross-attention at the input side, and
  `config.text_encoder` (a tiny CLIP trained from scratch in a pre-stage, then frozen:
  tasks/diffdis/text_encoders.py) whose widths c and e take, for the captions of `captions`
  (a data/*_captions.py module)."""
  m = config.model
  m.input_size, m.in_channels = input_size, in_channels
  m.block_out_channels = channels
  m.down_block_types = ('CrossAttnDownBlock2D', 'DownBlock2D')
  m.up_block_types = ('UpBlock2D', 'CrossAttnUpBlock2D')
  m.layers_per_block = 1
  m.attention_head_dim = 4                        # heads (diffusers' name)
  m.norm_num_groups = norm_num_groups

  # the pre-stage's targets (tasks/diffdis/text_encoders.py): positives 'caption' (only the
  # caption drawn) | 'class' (every caption of the image's class); caption_weight, a second
  # term that gives every training caption its own point (0: none), so that the phrasings of
  # a class are not mapped to one point
  config.text_encoder = ml_collections.ConfigDict(dict(
      num_hidden_layers=2, num_attention_heads=4, seed=0, positives='caption',
      caption_weight=0.3, **text_encoder))
  d = config.diffdis
  d.text_dim = config.text_encoder.projection_dim
  d.context_dim = config.text_encoder.hidden_size
  d.context_length = captions.MAX_LENGTH
  d.head_blocks = 1
  d.positives = 'same_label'      # captions made from labels: every image of a class shares
  return config                   # its content


def diffdis_config() -> ml_collections.ConfigDict:
  """The shared fields (configs/common.py) less SD-DiT's, plus the UNet, `diffdis`, `init` and
  DiffDis' own `eval` section."""
  config = common.get_base_config()
  config.method = 'diffdis'
  for sddit_only in ('sddit', 'edm', 'sample', 'eval'):
    del config[sddit_only]
  config.eval = diffdis_eval()
  config.model = sd15_unet()
  config.diffdis = diffdis_defaults()
  config.init = ml_collections.ConfigDict()
  config.init.sd_folder = ''      # a diffusers SD folder: its UNet initialises the model
  config.init.text_encoder = ''   # a transformers CLIP text folder for c and e; '' : the SD
                                  # folder's (SD 1.x's lacks the projection 'projected_eot' uses)
  # the workdir of a generation-only DiffDis run (diffdis.align_mode='none') on the same data:
  # its latest checkpoint's EMA UNet starts this run (a fine-tune, as the paper's from SD),
  # and a captioned set's text encoder is its; '' : from scratch (or init.sd_folder)
  config.init.pretrained_generator = ''
  config.data.name = 'image_text_pairs'
  return config
