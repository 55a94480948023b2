# The base image of every ML module (sdxl, sdv-pipeline, sdxl-img2img, sdxl-inpainting,
# sdxl-outpainting): CUDA runtime, the exactly pinned Python packages that decide the output
# bytes, and lilypad's shared inference code (lilypad/ml). Each module's Dockerfile adds only its
# weights and its code. Build it first, from the repository root, with the lilypad package as
# the context:
#
#   docker build -f module/ml-base.Dockerfile -t lilypad/ml-base:local lilypad
#
# Module images then build FROM it (their ARG BASE names another tag, e.g. a registry's).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/lilypad \
    MODEL_DIR=/models \
    CUBLAS_WORKSPACE_CONFIG=:4096:8 \
    PYTHONHASHSEED=0

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# The same versions as the project's `ml` extra (pyproject.toml; tests/test_module_images.py
# checks them): they decide the output bytes.
RUN pip install torch==2.13.0 diffusers==0.42.1 transformers==5.23.0 safetensors==0.8.0 \
        Pillow==13.0.0 imageio-ffmpeg==0.8.1 torchsde==0.2.6 scipy==1.17.1 numpy==2.4.6 \
        peft==0.21.2 accelerate==1.15.0 compel==2.5.1 opencv-python-headless==5.0.0.93 \
        huggingface_hub==2.4.0

# The inference code imports lilypad.errors and lilypad.ml only (the test above checks that too).
COPY __init__.py errors.py /opt/lilypad/lilypad/
COPY ml /opt/lilypad/lilypad/ml
