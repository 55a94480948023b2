"""Inference code shared by the built-in ML modules (``module/sdxl``, ``module/sdv-pipeline``,
``module/sdxl-img2img``, ``module/sdxl-inpainting``, ``module/sdxl-outpainting``, ``module/sd15``,
``module/sd21``, ``module/sdxl-turbo``, ``module/sd-turbo``, ``module/lcm``).

Only module entrypoints import this package: it needs the optional ``ml`` extra (torch, diffusers,
transformers), which the CLI, the solver and the provider daemon never load.

    determinism  seeded CPU generators, deterministic kernels, no TF32
    schedules    ComfyUI's sigma schedules over a model's noise levels
    samplers     the k-diffusion samplers by ComfyUI name, driving a denoiser
    denoisers    diffusers UNets wrapped as ``denoised = D(x, sigma)``
    tiny         deterministic tiny weights of the real architectures
    weights      where a module's weights come from (``MODEL_DIR`` or tiny)
    sdxl, svd    the text-to-image, image-editing and image-to-video jobs
    sd, family   SD 1.5 / 2.1, the turbo models and LCM: their settings, loading and sampling
    prompts      prompt weighting ((word:1.4), blends) through compel, for every text encoder
    lora         LoRAs and textual-inversion embeddings: their .safetensors checks (plain Python,
                 which lilypad.modules.files runs before a job is signed) and loading
    edit         the pictures and masks of image-editing jobs, from input file to result
    media        byte-deterministic PNG, APNG, WebP and MP4 writers
"""
