"""Data: everything from Cognata frames on disk to the samples a run reads, and the mAP metric.

- ``synth``: the synthetic dataset in Cognata's exact on-disk layout (the embedded default);
- ``preprocess``: raw frame -> network input, the ``<prefix>_<i>.pkl`` samples and their manifest;
- ``store``: the memory-mapped sample store and the one reader over pickles or a store;
- ``download``: the official artifacts, rclone and R2 downloads, verified and safe extraction;
- ``metric``: COCO mAP of detections against the samples' ground truth (the reference's metric).

May import: the package root (``config``, ``cognata``, ``fileio``).
"""
