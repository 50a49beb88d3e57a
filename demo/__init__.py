"""``make demo``: the ward → print-site scenario with the real programs, on loopback."""
