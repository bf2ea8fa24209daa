"""Cross-layer utilities: atomic files, PNG rendering."""
