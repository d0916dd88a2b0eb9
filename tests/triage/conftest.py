import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "runner"))   # runner_repo: the throwaway replay repository
sys.path.insert(0, str(HERE.parent / "report"))   # fakerun: run directories as the runner writes them
