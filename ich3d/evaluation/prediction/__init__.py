"""Prediction as a product: :mod:`.predict` (``ich3d predict``) and :mod:`.submission` (the RSNA file)."""
