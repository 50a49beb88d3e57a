"""Contractor side (``lgwan-gateway``): the ASP drop service and print-site custody."""
