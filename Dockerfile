# The project's image for a Docker work pool: the package and its runtime dependencies (no dev extras), run as
# a non-root user. deploy/docker.prefect.yaml builds and pushes it; the flows are imported from the installed
# package (module entrypoints), so the image holds no checkout.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false
# (the last line: prefect.toml turns Prefect's analytics off, but it is read only from the working directory)

RUN useradd --create-home --uid 10001 pipelines

WORKDIR /tmp/src
COPY pyproject.toml README.md ./
COPY blocks/ blocks/
COPY clients/ clients/
COPY tasks/ tasks/
COPY flows/ flows/
COPY emulators/ emulators/
COPY benchmarks/ benchmarks/
COPY demo/ demo/
# A regular (not editable) install into site-packages; the sources are not needed afterwards.
RUN pip install . && cd / && rm -rf /tmp/src

USER pipelines
# Flow runs start here (the deployments' pull step): local state (.pipeline-state/, reports/) lives in the
# container and goes with it, so production sets the pipelines_state variable (docs/production.md).
WORKDIR /home/pipelines
