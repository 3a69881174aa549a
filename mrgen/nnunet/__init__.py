"""nnU-Net v2 integration: raw-dataset export (synthetic and real), geometry sidecars, label mappings,
environment helpers and the short CPU trainer (``trainers/``). See docs/segmentation.md."""
