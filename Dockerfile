# The Jellybean image: Jellybean (`jellybean[runtime,k8s]`, built from this source tree) on Ray's own
# image, so that one image runs the operator (`jellybean operator`, the Helm chart's `image`) and the
# Ray head and workers that serve the replicas (the chart's `ray.image`; KubeRay sets their command
# to `ray start`, replacing the entrypoint). Build it from the repository's root:
#
#     make image        # docker build -t jellybean:0.1.0 .  (the tag the chart's defaults name)
#
# RAY_VERSION is the Ray the project is tested with, and the chart's `ray.version`: pyproject.toml
# allows ray[serve]>=2.40,<3, and this image pins 2.60.0 (its FROM tag, and a constraint that keeps
# pip from replacing the image's Ray). torch comes from PyTorch's CPU index: the same 2.13.0 as
# pyproject.toml's pin, without the multi-GB CUDA libraries that PyPI's Linux build pulls in.
ARG RAY_VERSION=2.60.0

# Stage 1: the wheel, built from the source tree (.dockerignore keeps the context to what it needs).
FROM rayproject/ray:${RAY_VERSION}-py311-cpu AS wheel
COPY --chown=1000:100 . /home/ray/src
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /home/ray/wheels /home/ray/src

# Stage 2: Ray's image with the wheel and its runtime and k8s extras installed, nothing else.
FROM rayproject/ray:${RAY_VERSION}-py311-cpu
ARG RAY_VERSION
ARG JELLYBEAN_VERSION=0.1.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
LABEL org.opencontainers.image.title="jellybean" \
      org.opencontainers.image.version="${JELLYBEAN_VERSION}" \
      org.opencontainers.image.description="Jellybean: cost-optimal serving of ML inference workflows on tiered edge sites, on Ray" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.ray.version="${RAY_VERSION}"
COPY --from=wheel --chown=1000:100 /home/ray/wheels /tmp/wheels
RUN python -m pip install --no-cache-dir --extra-index-url "${TORCH_INDEX}" \
        "ray[serve]==${RAY_VERSION}" "torch==2.13.0" \
        "/tmp/wheels/jellybean-${JELLYBEAN_VERSION}-py3-none-any.whl[runtime,k8s]" \
    && rm -rf /tmp/wheels \
    && jellybean --help > /dev/null
# rayproject/ray's user: ray (uid 1000, group users 100), never root; the chart's pods run as uid 1000
# (Ray) and 10001 (the operator), both non-root, on a read-only root filesystem.
USER 1000:100
WORKDIR /home/ray
ENTRYPOINT ["jellybean"]
CMD ["--help"]
