"""Training and evaluation of DIC / DICGAN.

Training (`facesr train`): `config` (typed YAML), `dataset` + `augment` + `sampler` (data),
`losses`, `perceptual`, `stages` (one optimisation step per stage), `ema`, `state` (resumable
training state), `validation`, `export` (serving checkpoints), `distributed` (torchrun) and
`trainer` (the loop).
"""
