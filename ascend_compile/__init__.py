"""ascend_compile: the ``ascend_bi`` torch.compile backend for batch-invariant inference.

``torch.compile(model, backend="ascend_bi")`` makes every row's result independent of the batch
it runs in; ``eager_mode()`` gives the same guarantee without compiling (the slow baseline).
"""

from ascend_compile.ops.eager import eager_mode
from ascend_compile.report import CompileReport, clear_reports, reports
from ascend_compile.settings import Settings

__version__ = "0.1.0"
__all__ = ["CompileReport", "Settings", "clear_reports", "eager_mode", "reports", "__version__"]
