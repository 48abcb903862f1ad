"""snplab: an integration test suite for the AMD SEV-SNP extended guest request."""

__version__ = "0.1.0"
