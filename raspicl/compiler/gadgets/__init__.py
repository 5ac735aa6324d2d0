"""Gadgets: each turns one kind of op into weight blocks, with a stated error bound."""
