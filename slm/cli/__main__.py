"""`python -m slm.cli` — what `torchrun --nproc-per-node G -m slm.cli train …` runs on every rank."""

import sys

from slm.cli import main

sys.exit(main())
