"""mtbert: one BERT encoder fine-tuned on sentiment, paraphrase and similarity at once."""
__version__ = "0.1.0"
