"""Interop with HuggingFace and TransformerLens (filled in below)."""
