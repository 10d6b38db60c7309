import sys

from cimcal.cli import main

sys.exit(main())
