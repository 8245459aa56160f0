"""Evaluation: the long-tail metrics (`metrics`), their counts batch by batch (`tally`), scoring
predictions tables (`report`), and Fig. 1 (`plot`)."""

from dlsa_cli.evaluation.report import (
    EvaluationReport,
    Predictions,
    evaluate_files,
    evaluate_predictions,
    iter_predictions,
    read_predictions,
    read_train_counts,
)
from dlsa_cli.evaluation.tally import TableMetrics, Tally

__all__ = ["EvaluationReport", "Predictions", "TableMetrics", "Tally", "evaluate_files", "evaluate_predictions",
           "iter_predictions", "read_predictions", "read_train_counts"]
