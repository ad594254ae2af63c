#!/bin/sh
# The wheel's two steps, run by the Dockerfile and by tests/test_wheel.py alike (so `make test`
# covers the image's install):
#
#   sh deploy/install.sh build SOURCE DIST     the wheel of the checkout SOURCE, into the folder DIST
#   sh deploy/install.sh install DIST PYTHON   that wheel, with the postgres extra, into PYTHON's environment
#
# The build uses the setuptools already installed (no isolated build environment to download);
# pip's own settings (PIP_NO_INDEX, PIP_FIND_LINKS, ...) come from the environment as usual.
set -eu
case "${1:-}" in
  build)
    "${PYTHON:-python3}" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$3" "$2" ;;
  install)
    set -- "$2"/gbsweep-*.whl "$3"
    [ -f "$1" ] || { echo "install.sh: no gbsweep wheel in ${1%/*}" >&2; exit 2; }
    "$2" -m pip install --quiet --no-cache-dir "$1[postgres]" ;;
  *)
    echo "usage: sh deploy/install.sh build SOURCE DIST | install DIST PYTHON" >&2; exit 2 ;;
esac
