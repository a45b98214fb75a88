"""Occlum 0.31: the libOS backend (:mod:`.plugin`, a builtin plugin registered like any
third-party one). Occlum's own tools build the enclave, in Occlum's container: see
:mod:`.backend`; the ``[occlum]`` spec section it declares is :mod:`.spec_section`."""
