"""Offline evaluation of the shipped models: metrics, reports and plots. Never imports torch."""
