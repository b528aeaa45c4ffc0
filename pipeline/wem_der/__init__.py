"""wem-der-pipeline: bulk submission of records to AEMO's WEM DER Register."""

__version__ = "0.1.0"
