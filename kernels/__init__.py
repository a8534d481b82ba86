"""Bundled GPU kernels: one family per module (HIP source, launch rule, numpy reference), backends
(hip, cuda, cpu) and the on-disk compile cache."""
