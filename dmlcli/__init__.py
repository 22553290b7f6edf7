"""dmlcli: diverse DML ensembles for adversarial robustness (train, attack, report).

The names most scripts need; every subcommand but ``dml run`` (a recipe of the others) is a
function of :mod:`dmlcli.api`.
"""

from dmlcli.adapters import as_art_classifier, as_classifier
from dmlcli.data import load_dataset
from dmlcli.errors import DmlError
from dmlcli.runs import load_run, open_run
from dmlcli.store import Store
from dmlcli.version import __version__

__all__ = [
    "DmlError",
    "Store",
    "__version__",
    "as_art_classifier",
    "as_classifier",
    "load_dataset",
    "load_run",
    "open_run",
]
