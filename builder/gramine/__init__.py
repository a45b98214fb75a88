"""Gramine 1.9: the libOS backend (:mod:`.plugin`, a builtin plugin registered like any
third-party one) and the libraries it is built from, which are usable on their own: measuring
(:mod:`.measure`), SIGSTRUCTs (:mod:`.sigstruct`, :mod:`.sign`, :mod:`.signer`), protected files
and manifests."""
