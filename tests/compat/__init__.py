"""The pysyncq and paipa behaviour and documentation pages, run on ringcast."""
