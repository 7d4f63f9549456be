"""Inference backends: each turns a float32 NCHW batch into (box regressions, class logits)."""
