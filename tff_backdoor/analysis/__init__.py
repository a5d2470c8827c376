"""Pure NumPy analysis of what runs leave: captured client updates, anomaly scores, diagnostics."""
