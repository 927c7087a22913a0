"""`python -m bench`: run the stream benchmark (see bench/README.md)."""

import sys

from bench.stream_bench import main

sys.exit(main())
