"""Ward side (lgwan-client): sample data, seal, send, DVD, ledger, printed notices."""
