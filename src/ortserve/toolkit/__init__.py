"""Preparing models: export, optimize, quantize, fp16, evaluation reports and profiles."""
