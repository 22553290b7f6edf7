"""Evaluation: benign accuracy, robustness, transfer, CLEVER, certification, detection."""
