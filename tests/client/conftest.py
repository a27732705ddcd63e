import sys
from pathlib import Path

# platform_helpers (serve, keys, moto) and the fault proxy, imported by name like tests/platform does
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
