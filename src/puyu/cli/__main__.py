"""`python -m puyu.cli ...` (what torchrun workers run): the same as the `puyu` console script."""

import sys

from puyu.cli import main

sys.exit(main())
