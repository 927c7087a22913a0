import sys

from pyngx.cli import main

sys.exit(main())
