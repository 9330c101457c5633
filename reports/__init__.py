"""Evaluator analytics on stored answers: response rates and pre/post change."""
