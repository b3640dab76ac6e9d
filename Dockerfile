# AIRCON gateway image. GPU hosts: build with the default CUDA torch from PyPI.
#   docker build -t aircon .                                   (CUDA build of torch)
#   docker build --build-arg TORCH_SPEC="torch==2.13.0 torchvision==0.28.0" \
#                --build-arg TAPS_EXTRA=taps -t aircon:cpu .
FROM python:3.11-slim-bookworm

ARG TORCH_SPEC="torch torchvision"
# The TAPS model's runtime: taps-gpu (onnxruntime-gpu) or taps (CPU onnxruntime).
ARG TAPS_EXTRA="taps-gpu"
# rt-utils needs OpenCV, which needs libGL and glib; openssl makes the console's first,
# self-signed certificate (docker-compose.yml, service console-cert).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 dcmtk openssl \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/aircon
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# torch, torchvision and nnunetv2 in one pip command, so pip resolves one torch build.
RUN pip install --no-cache-dir ${TORCH_SPEC} ".[${TAPS_EXTRA}]" \
 && pip install --no-cache-dir --no-deps "lavlab-taps==1.1.2" \
 && useradd --system --uid 1000 aircon

COPY models ./models
COPY config.yaml ./config.yaml
# Mount points owned by aircon, so that a new named volume mounted on one is writable (Docker
# copies the image folder's owner into an empty volume).
RUN mkdir -p /opt/aircon/var/spool /opt/aircon/var/rtstruct /etc/aircon/tls \
 && chown -R aircon /opt/aircon/var /etc/aircon/tls
USER aircon
EXPOSE 11112
HEALTHCHECK --interval=60s --timeout=15s CMD echoscu -aet ECHOSCU -aec AIRCON 127.0.0.1 11112 || exit 1
ENTRYPOINT ["aircon", "-c", "/opt/aircon/config.yaml"]
CMD ["serve"]
