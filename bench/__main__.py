"""`python -m bench`: the stream (S1-S3) and HTTP (S4-S7) benchmarks (see bench/README.md)."""

import sys

from bench.http_bench import main

sys.exit(main())
