"""jetevo: learnable jet evolution.

Stages, data flowing one way: ``io`` (readers/writers) -> ``trees`` (FastJet kt
reclustering into declustering trees) -> ``tokenize`` -> ``model`` -> ``generate``
-> ``evaluate``; ``cli`` sits on top. Importing the package is cheap: no torch,
no FastJet until a stage that needs it is imported.
"""

from jetevo.errors import InputError, JetevoError

__version__ = "0.1.0"
__all__ = ["InputError", "JetevoError", "__version__"]
