"""dmlcli: diverse DML ensembles for adversarial robustness (train, attack, report)."""

__version__ = "0.1.0"

from dmlcli.data import load_dataset  # noqa: E402
from dmlcli.errors import DmlError  # noqa: E402
from dmlcli.store import Store, load_run  # noqa: E402

__all__ = ["DmlError", "Store", "load_dataset", "load_run", "__version__"]
