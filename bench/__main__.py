"""`python -m bench`: run every benchmark script in this folder, one after another."""

import runpy
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here))
only = set(sys.argv[1:])
for script in sorted(here.glob("*.py")):
    if script.name.startswith("_"):
        continue
    if only and script.stem not in only:
        continue
    print(f"== {script.stem}", flush=True)
    sys.argv = [str(script)]  # each script parses its own options; the names chosen here are not for it
    runpy.run_path(str(script), run_name="__main__")
