"""vLLM glue: the ``vllm.general_plugins`` entry point and the ``CompilerInterface`` adaptor.

Nothing here imports vLLM at package import time, so ``ascend_compile`` works without vLLM.
"""
