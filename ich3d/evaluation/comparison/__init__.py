"""Several evaluated runs side by side: :mod:`.compare` (``ich3d compare``) and :mod:`.seeds` (``ich3d seeds``)."""
