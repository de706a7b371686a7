"""diffdis_jax: SD-DiT and DiffDis in JAX/Flax.

Version ranges are the ones tested: jax 0.10.2 on Python 3.11 (CPU, this project's CI) and
jax 0.11 on Python 3.12 (GPU hosts).
"""
from setuptools import find_packages, setup

setup(
    name='diffdis_jax',
    version='0.1.0',
    description='SD-DiT and DiffDis: diffusion transformers and UNets with self-supervised '
                'discrimination, in JAX/Flax',
    packages=find_packages(include=['diffdis_jax', 'diffdis_jax.*']),
    # the zero-shot suite's class names and prompts (eval/zeroshot_suite.py)
    package_data={'diffdis_jax.eval': ['zeroshot_classes.json']},
    python_requires='>=3.11',
    install_requires=[
        'jax>=0.10.2,<0.12',
        'flax>=0.12.0,<0.14',
        'optax>=0.2.5,<0.3',
        'orbax-checkpoint>=0.12.0,<0.14',
        'ml_collections>=1.0,<2',
        'clu>=0.0.12,<0.1',
        'grain>=0.2.12,<0.3',
        'tensorflow-datasets>=4.9.8,<5',
        # tfds' download_and_prepare (preparing ImageNet from its tars) reads its own resource
        # files through etils.epath, which needs this and does not declare it
        'importlib_resources>=6',
        'transformers>=5.0,<6',
        'safetensors>=0.4',
        'numpy>=1.26',
        'scipy>=1.11',
        'matplotlib>=3.8',     # the studies' convergence plots (study/curves.py)
        'pillow>=10',
        'scikit-learn>=1.4',   # the demo's digits ship with it
    ],
    extras_require={
        # clu's metric writers need TensorFlow and TensorBoard
        'tf': ['tensorflow-cpu>=2.16', 'tensorboard>=2.16'],
        'test': [
            'torch==2.13.0',   # exactly: its CPU wheel is local; others download gigabytes
            'diffusers>=0.35',
            # pytorch-fid's InceptionV3 is the FID reference; torchvision 0.28 pairs with torch
            # 2.13 (diffdis_jax/torch_peers.py lets its CUDA build import beside the CPU torch)
            'torchvision==0.28.0',
            'pytorch-fid==0.3.0',
            'import-linter>=2.1',   # the layers contract in .importlinter
            'pytest>=8',
            'pytest-xdist>=3.5',
            'nbclient>=0.10',
            'nbformat>=5.10',
            'ipykernel>=6.29',
        ],
    },
)
