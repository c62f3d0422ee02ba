"""`python -m dmf_ray.cli` = `dmf`."""

import sys

from dmf_ray.cli import main

sys.exit(main())
