"""CareBot stack."""
