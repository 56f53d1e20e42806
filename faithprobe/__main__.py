import sys

from faithprobe.cli import main

sys.exit(main())
