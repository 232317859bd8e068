# aurora-bootstrap: the one-shot job as an image.
#
# Built from a wheelhouse made beforehand (`make wheels`): every dependency from the
# hashed lock file plus the app's own wheel, so the build needs no network. The RDS
# CA bundle is the tracked ca/rds-global-bundle.pem (`make ca-bundle` refreshes and
# checks it; `make image` checks it first), installed where DB_SSLROOTCERT points.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# Found and removed by `docker image prune --filter label=aurora-bootstrap.stage=build`.
LABEL aurora-bootstrap.stage=build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY requirements.lock /tmp/requirements.lock
COPY wheels/ /tmp/wheels/
# What the job never runs goes (botocore's data for services that neither it nor
# botocore's credential providers make a client for, setuptools): app/services.py
# says which, and the build reads it.
COPY docker/trim-image.py /tmp/trim-image.py
RUN python3 -m venv /opt/aurora-bootstrap \
 && /opt/aurora-bootstrap/bin/pip install --no-index --find-links /tmp/wheels \
        --require-hashes -r /tmp/requirements.lock \
 && /opt/aurora-bootstrap/bin/pip install --no-index --no-deps /tmp/wheels/aurora_bootstrap-*.whl \
 && /opt/aurora-bootstrap/bin/pip uninstall --yes pip \
 && /opt/aurora-bootstrap/bin/python /tmp/trim-image.py \
 && find /opt/aurora-bootstrap/lib -name __pycache__ -prune -exec rm -rf {} + \
 && /opt/aurora-bootstrap/bin/python -m compileall -q -j 0 /opt/aurora-bootstrap/lib

FROM ${BASE_IMAGE}
# Another bundle (a private CA in front of the database): put it under certs/ and
# pass --build-arg RDS_CA_BUNDLE=certs/NAME.pem
ARG RDS_CA_BUNDLE=ca/rds-global-bundle.pem
COPY --from=build /opt/aurora-bootstrap /opt/aurora-bootstrap
COPY ${RDS_CA_BUNDLE} /etc/aurora-bootstrap/rds-global-bundle.pem
ENV PATH="/opt/aurora-bootstrap/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# No shell user needed: a fixed unprivileged uid, as ECS and Kubernetes prefer.
USER 65532:65532
# Stop signals stay blocked from exec until the job has its handlers in place (it
# unblocks them first thing), so that a SIGTERM at any moment gets a result line.
ENTRYPOINT ["env", "--block-signal=TERM", "--block-signal=INT", "aurora-bootstrap"]
CMD ["apply"]
