"""The FlowSR trainer: stage 1 (SR-flow pre-training) and stage 2 (consistency distillation).

Run ``python -m train.train --config train/configs/tiny_stage1.yaml`` (or through ``accelerate launch``);
see ``train/README.md``.
"""
