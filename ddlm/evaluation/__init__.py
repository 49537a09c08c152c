"""Evaluation of text and models: bounds of texts and files, ``ddlm eval``'s table and conditional scores
(``scoring``), the SEDD/MDLM zero-shot suite (``zero_shot``), sample quality and generative perplexity
(``sample_quality``) and the lm-evaluation-harness model (``lm_eval_model``).

``scoring``'s public names are importable from here, as ``ddlm.evaluation.score_texts``."""

from .scoring import (DATASET_MIN_BLOCKS, DEFAULT_NUM_T, ESTIMATORS, BoundTotals, ConditionalScore, TextBound,
                      ar_conditional_scores, ar_text_nll, blocks_by_length, default_batch_size, encode_pair, encode_pairs,
                      eval_table, lambada, load_model, load_tokenizer, model_batch_size, score_continuations, score_texts,
                      split_last_word, text_blocks)

__all__ = ["BoundTotals", "ConditionalScore", "DATASET_MIN_BLOCKS", "DEFAULT_NUM_T", "ESTIMATORS", "TextBound",
           "ar_conditional_scores", "ar_text_nll", "blocks_by_length", "default_batch_size", "encode_pair", "encode_pairs",
           "eval_table", "lambada", "load_model", "load_tokenizer", "model_batch_size", "score_continuations", "score_texts",
           "split_last_word", "text_blocks"]
