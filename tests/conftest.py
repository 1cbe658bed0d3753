"""Test-wide settings.

DeepSpeed's CPU accelerator JIT-compiles its communication op into TORCH_EXTENSIONS_DIR (default
~/.cache/torch_extensions/py311_cpu/, one folder per Python version and device, not per environment). Two virtual
environments with different torch installs on one machine then rebuild it in turn, each build recompiling for a
minute or more inside a test's launch. Each environment gets its own folder instead (scripts/setup_env.sh builds the
op there once); a TORCH_EXTENSIONS_DIR set by the user wins.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
