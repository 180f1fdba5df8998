"""The README's two commands stay true: CI runs the README's install and test commands."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_runs_the_readme_install_and_test_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    setup, tests = _bash_blocks(readme)[:2]
    install = setup.strip().splitlines()[0]
    assert "pip install -r requirements.txt" in install
    assert install in ci.splitlines()  # CI runs the README's install line verbatim
    main_job = setup.strip().splitlines()[1]
    assert "reproductions/ureSnet/run.py" in main_job
    assert (ROOT / "reproductions" / "ureSnet" / "run.py").exists()
    assert "python -m pytest -q tests" in tests and "python -m pytest -q tests" in ci
