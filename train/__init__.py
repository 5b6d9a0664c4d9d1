"""Training, evaluation and metrics for GroupDNet (not needed at inference time)."""
