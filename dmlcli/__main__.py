"""``python -m dmlcli`` is ``dml`` (used with torchrun)."""

from dmlcli.cli.app import main

if __name__ == "__main__":
    main()
