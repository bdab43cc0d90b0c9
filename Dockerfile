# The demo services (demo_services/) on graceful_web, for docker-compose.yml.
# A real build uses python:3.12-slim and the public package index; `make test-docker` passes a
# local BASE_IMAGE and PIP_INSTALL_OPTIONS pointing at a wheelhouse, so it needs no registry.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ARG PIP_INSTALL_OPTIONS=""
# postgres: asyncpg, for POST /reports with GRACEFUL_DURABLE_URL=postgresql://...
ARG EXTRAS=demo,postgres
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/venv/bin:$PATH

# .dockerignore lets in only what the services need (and the wheelhouse, when there is one).
COPY . /src
# A venv: Debian's own python3 refuses `pip install` into the system (PEP 668).
RUN python3 -m venv /venv \
    && pip install $PIP_INSTALL_OPTIONS "/src[$EXTRAS]" \
    && mkdir /app && cp -r /src/demo_services /app/ \
    && rm -rf /src

WORKDIR /app
ENV HOST=0.0.0.0 PORT=8080 JOBS_FILE=/data/jobs.log
EXPOSE 8080
# Exec form: python is PID 1 and gets docker's SIGTERM itself, not a shell that swallows it.
CMD ["python", "-m", "demo_services.aiohttp_service"]
