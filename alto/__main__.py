"""`python -m alto` runs the `alto` command line."""

from alto.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
