# One image for every jetagent service; the command picks the service.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY platform platform
COPY capabilities capabilities
COPY projections projections
COPY nats nats
# The python tool's sandbox needs libseccomp (libseccomp2, part of the base image) and a
# kernel with Landlock; neither needs a privilege. The check fails the build, not a run,
# if the library is missing. Services run as an ordinary user: the sandbox is built for
# that (README "Sandbox"); NATS passwords arrive as files (README "Credentials").
RUN pip install --no-cache-dir . \
    && python -c "import pyseccomp" \
    && useradd --system --uid 10001 --no-create-home jetagent
USER jetagent
ENTRYPOINT ["jetagent"]
CMD ["--help"]
