"""nnU-Net trainer classes found through ``nnUNet_extTrainer`` (see ``mrgen.nnunet.env``).

nnU-Net imports each module of this folder as a top-level module, so the modules here import nothing from
``mrgen`` and keep their own configuration (environment variables).
"""
