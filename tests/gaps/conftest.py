import sys
from pathlib import Path

# The run builder is shared with the report tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "report"))
