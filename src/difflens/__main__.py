"""``python -m difflens`` (and ``torchrun --nproc_per_node N -m difflens adl …``)."""

import sys

from difflens.cli import main

sys.exit(main())
