"""Tiny TARGETs for the ``ascend-bi dump`` / ``check`` tests (files and ``module:function`` alike)."""
