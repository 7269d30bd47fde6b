# hopper-cu130: hopper cu130 torch 2.14.1 (slim)
FROM imagefactory/base:bookworm-build AS build
RUN pip install cuda-toolkit[nvcc,cccl,cudart,cublas,cusparse]==13.0.3
RUN pip install torch==2.14.1 accelerate==1.15.0 peft==0.21.2 transformers==5.17.0 trl==1.15.0
RUN cmake -DCOMPUTE_CAPABILITY="90" && ls libbitsandbytes_cuda130.so

FROM imagefactory/base:bookworm AS runtime
LABEL org.opencontainers.image.title="imagefactory:hopper-cu130"
LABEL org.opencontainers.image.description="LLM fine-tuning image for hopper (H100, H200, GH200) on cu130, torch 2.14.1"
LABEL io.imagefactory.target="hopper-cu130"
LABEL io.imagefactory.arch="hopper"
LABEL io.imagefactory.vendor="nvidia"
LABEL io.imagefactory.sm="9.0"
LABEL io.imagefactory.toolkit="cu130"
LABEL io.imagefactory.torch="2.14.1"
LABEL io.imagefactory.triton="3.8.0"
LABEL io.imagefactory.python="3.11"
LABEL io.imagefactory.flavor="slim"
LABEL io.imagefactory.bitsandbytes="0.50.2"
LABEL io.imagefactory.bitsandbytes-library="libbitsandbytes_cuda130.so"
LABEL io.imagefactory.platforms="linux/amd64,linux/arm64"
LABEL io.imagefactory.nvcc="pypi cuda-toolkit[nvcc,cccl,cudart,cublas,cusparse]==13.0.3"
LABEL io.imagefactory.driver-floor="580"
LABEL io.imagefactory.unsloth="2026.10.9"
ENV PROBE_EXPECT_TARGET=hopper-cu130
ENV PROBE_EXPECT_VENDOR=nvidia
ENV PROBE_EXPECT_SM=9.0
ENV PROBE_EXPECT_CUDA=13.0
ENV PROBE_EXPECT_TORCH=2.14.1
ENV PROBE_EXPECT_TRITON=3.8.0
ENV PROBE_EXPECT_BITSANDBYTES=0.50.2
ENV PROBE_EXPECT_PYTHON=3.11
ENV PROBE_EXPECT_DTYPE=bf16
ENV PROBE_EXPECT_WARM_CACHE=1
ENV PROBE_EXPECT_UNSLOTH=2026.10.9
