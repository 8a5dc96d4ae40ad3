#!/bin/sh
# Build-time check, run by the image build (containers.py) in %post / RUN: import the image's real xformers,
# apply the patch and fail the build unless xformers' forward dispatch lists cutlass and no flash op.
set -eu
PYTHONPATH=/opt/attnbench/variant python3 -m attnbench_xformers_cutlass
