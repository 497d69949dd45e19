"""`mia-explorer`: start the Streamlit app (app.py beside this package, as in a source checkout or `pip install -e .`)."""

from __future__ import annotations

import sys
from pathlib import Path


def app_path() -> Path:
    return Path(__file__).resolve().parents[1] / "app.py"


def main(argv: list[str] | None = None) -> int:
    app = app_path()
    if not app.is_file():
        print(f"error: the app's pages are not installed beside the package ({app} is missing). Start it from a "
              "source checkout: `pip install -e .` there, or `bash scripts/app.sh`.", file=sys.stderr)
        return 2
    from streamlit.web import cli as stcli

    sys.argv = ["streamlit", "run", str(app), *(sys.argv[1:] if argv is None else argv)]
    return stcli.main()


if __name__ == "__main__":
    raise SystemExit(main())
