"""Train one stored training run (env RUN_ID) to the end; every torchrun rank runs this file.

Rank 0 takes the run's lock and owns its row; other ranks only train (distillery.distill.runner).
"""

import os
import sys

from distillery.config import get_settings
from distillery.distill.runner import execute_run

settings = get_settings()
status = execute_run(settings.database_url, os.environ["RUN_ID"], settings)
print(f"run {os.environ['RUN_ID']}: {status}", flush=True)
sys.exit(0 if status in ("completed", "cancelled") else 1)
