"""golf-audit: compliance auditing and evaluation harness for OpenAI Parameter Golf."""
__version__ = "0.1.0"
