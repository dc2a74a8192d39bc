"""The run core: one training run (train.py) or pretraining (pretrain.py), its callbacks, resumption, folder lock,
evaluation, identity, console output, W&B logging and provenance entry."""
