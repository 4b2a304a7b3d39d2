# One image for every jetagent service; the command picks the service.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY platform platform
COPY capabilities capabilities
COPY projections projections
COPY nats nats
RUN pip install --no-cache-dir . && useradd --system --uid 10001 jetagent
USER jetagent
ENTRYPOINT ["jetagent"]
CMD ["--help"]
