"""Data: everything from Cognata frames on disk to the samples a run reads, and the mAP metric.

- ``synth``: the synthetic dataset in Cognata's exact on-disk layout (the embedded default);
- ``preprocess``: raw frame -> network input, the ``<prefix>_<i>.pkl`` samples and their manifest;
- ``store``: the memory-mapped sample store's format and the one reader over pickles or a store;
- ``store_writer``: the resumable store writer, from pickles or straight from raw frames;
- ``download``: the official artifacts, the download errors, the rclone and R2 commands;
- ``extract``: verified and safe extraction of a downloaded tarball or file;
- ``fetch``: the download protocol end to end (``fetch``, ``fetch_dataset``, ``fetch_model``);
- ``metric``: COCO mAP of detections against the samples' ground truth (the reference's metric).

May import: the package root (``config``, ``cognata``, ``fileio``).
"""
