"""The test set-up leaves nothing behind: a script that imports ``tests.conftest`` for its
helpers (where pytest's hooks never run) still has its data folder removed when it ends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_script_importing_the_test_set_up_leaves_no_data_folder() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import tests.conftest as c; print(c._DATA_DIR)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    folder = Path(done.stdout.strip().splitlines()[-1])
    assert folder.name.startswith("tanso-test-data-")
    assert not folder.exists()
