# The image deploy/sweep-workers.yaml runs: the gbsweep wheel with the postgres extra, a non-root
# user, `sweep` as the entry point. Built from a checkout:
#
#   docker build -t registry.example.com/gbsweep:0.3.0 .
#
# The install steps are deploy/install.sh's, the ones tests/test_wheel.py runs in `make test`.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY . .
# The one step the test does not run: the test's venv has setuptools already.
RUN python -m pip install --quiet --no-cache-dir "setuptools>=70.1" \
 && sh deploy/install.sh build /src /dist

FROM python:3.11-slim
COPY --from=wheel /dist /dist
COPY deploy/install.sh /tmp/install.sh
RUN sh /tmp/install.sh install /dist python \
 && rm -rf /dist /tmp/install.sh \
 && useradd --create-home --uid 10001 sweep
USER sweep
WORKDIR /home/sweep
ENTRYPOINT ["sweep"]
CMD ["--help"]
