"""A DICOM node (PACS) as ich3d's input and output: retrieve one study, store result objects back.

Two protocols, chosen by the node's URL:

* ``http://host:port/dicom-web`` (or ``https://``): DICOMweb through dicomweb-client,
  QIDO-RS to find the study, WADO-RS to retrieve it, STOW-RS to store into it;
* ``dicom://AET@host:port``: DIMSE through pynetdicom (:mod:`.dimse`),
  C-FIND to find the study, C-GET to retrieve it, C-STORE to store; ich3d calls as
  ``--pacs-aet`` (default ``ICH3D``), an AE title the node must know.

Both need the ``pacs`` extra (``pip install 'ich3d[pacs]'``). Every failure is one
:class:`~ich3d.errors.UserError` line: a node that cannot be reached, an unknown
study, a store the node refuses (with the node's answer: HTTP status and DICOM
failure reasons, or the DIMSE status). What this module logs names only what the
user typed (the node's URL and the study UID) and counts: no patient, series or
instance identifier.
"""
