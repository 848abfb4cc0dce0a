"""Corpora, chat formatting and tokenisation."""
