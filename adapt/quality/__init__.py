"""Image-quality metrics matching the reference implementations.

- :mod:`adassr.adapt.quality.niqe`: NIQE, numpy/scipy float64 port of the original MATLAB release.
- :mod:`adassr.adapt.quality.niqe_torch`: the same NIQE, batched in torch (CPU and CUDA).
- :mod:`adassr.adapt.quality.psnr_ssim`: PSNR / SSIM as SR papers compute them (BasicSR semantics).
- :mod:`adassr.adapt.quality.lpips`: LPIPS v0.1 (AlexNet metric, VGG16 perceptual loss), plain torch.
- :mod:`adassr.adapt.quality.lpips_weights`: ``adassr fetch-weights lpips`` (restricted unpickling).
- :mod:`adassr.adapt.quality.cli`: the ``metrics`` and ``fetch-weights`` subcommands.

Nothing is imported here, so importing a submodule stays cheap (the CLI must not load torch).
"""
