"""Process-wide settings of a jetevo command, made once by its entry point.

Library functions (``train``, ``generate``, ``train_tokenizer``, ...) should change nothing
process-wide: no warning filters, no third-party logger levels, no C-library settings, no
logging handlers; they log through ``logging.getLogger(__name__)``. An entry point (``jetevo.cli.main``, a script) calls
:func:`configure_process` once, before the work starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

from jetevo.allocator import keep_freed_memory as keep_memory

# Lightning's start-up banners (devices, tips): shown only in verbose runs
_LIGHTNING_BANNER_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
    "lightning.fabric.utilities.distributed",  # "Initializing distributed: ..." on every rank
)
# environment variables that carry the global rank, most specific first: torchrun sets RANK,
# SLURM's srun SLURM_PROCID; LOCAL_RANK is the last resort (Lightning's own DDP launcher)
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK")


def global_rank() -> int:
    """This process's global rank from the launcher's environment (0 outside DDP)."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None and value.strip():
            try:
                return int(value)
            except ValueError:
                continue
    return 0


class RankZeroFilter(logging.Filter):
    """Let records through only on global rank 0 (read at each record: launchers that
    spawn their workers set the rank variables in the workers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return global_rank() == 0


class _StdoutHandler(logging.Handler):
    """Each message on its own line of whatever ``sys.stdout`` is when it is logged (so
    output redirected or captured after configuration still gets it), as ``print`` would."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))
        self.addFilter(RankZeroFilter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def configure_process(quiet: bool = False, keep_freed_memory: bool = True) -> None:
    """Process-wide settings of a jetevo command; safe to call more than once.

    - warning filters: Lightning's own use of a deprecated torch pytree API (``LeafSpec``),
      nothing a user can act on;
    - ``quiet``: Lightning's start-up banners (devices, tips) at WARNING;
    - ``keep_freed_memory`` (for the torch commands): glibc keeps freed memory in the heap
      (:func:`jetevo.allocator.keep_freed_memory`);
    - the ``jetevo`` logger: INFO and up printed to stdout as the bare message, on global
      rank 0 only (see :func:`global_rank`).
    """
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    if quiet:
        for name in _LIGHTNING_BANNER_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    if keep_freed_memory:
        keep_memory()
    logger = logging.getLogger("jetevo")
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        logger.addHandler(_StdoutHandler())


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to the process's stdout (file descriptor 1) to stderr, C
    libraries included, while the block runs: FastJet prints its banner on stdout at its
    first clustering, which would break a command's machine-readable output."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
