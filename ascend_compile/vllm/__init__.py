"""vLLM glue: the ``vllm.general_plugins`` entry point, the saveable compiled graph and its cache key,
and the ``CompilerInterface`` adaptor for vLLM's piecewise mode.

Nothing here imports vLLM at package import time, so ``ascend_compile`` works without vLLM.
"""
