"""Tumour segmentation of brain-MRI slices with a residual U-Net (ResUNet)."""
